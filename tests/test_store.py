"""The embedded redis-server keeps its data private: the files hold tokens, password hashes, transcripts."""
import stat
import time

from wxkf import keys
from wxkf.store import connect, start_embedded


def test_the_data_folder_and_files_are_readable_by_the_owner_only(tmp_path):
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    proc = start_embedded(data)
    try:
        r = connect(f"unix://{data / 'redis.sock'}")
        r.set(keys.token("wx1"), "secret-access-token")
        r.save()  # dump.rdb now; the AOF is written within a second
        deadline = time.monotonic() + 5
        while not (data / "appendonly.aof").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        r.close()
    finally:
        proc.terminate()
        proc.wait()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.iterdir() if p.is_file()]
    assert {"dump.rdb", "appendonly.aof", "redis.conf"} <= {p.name for p in files}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p.name, oct(p.stat().st_mode))


def test_the_embedded_server_keeps_every_write_and_snapshots_rarely(tmp_path):
    """Every write goes to the AOF, fsynced each second, so an acknowledged push survives the server
    being killed; snapshots and AOF rewrites, each a child process that takes a core for seconds,
    run at most every 5 minutes and past 256 MB (docs/benchmarks.md). Without persistence, neither."""
    import signal
    data = tmp_path / "var"
    proc = start_embedded(data)
    try:
        r = connect(f"unix://{data / 'redis.sock'}")
        assert r.config_get("appendonly")["appendonly"] == "yes"
        assert r.config_get("appendfsync")["appendfsync"] == "everysec"
        assert r.config_get("save")["save"] == "3600 1 300 100"
        assert int(r.config_get("auto-aof-rewrite-min-size")["auto-aof-rewrite-min-size"]) == 256 * 1024 * 1024
        r.xadd(keys.inbox(0), {"push": "acknowledged"})
        time.sleep(1.5)  # the next once-a-second fsync
        r.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = start_embedded(data)
    try:
        r = connect(f"unix://{data / 'redis.sock'}")
        assert [f for _, f in r.xrange(keys.inbox(0))] == [{"push": "acknowledged"}]
        r.close()
    finally:
        proc.terminate()
        proc.wait()
    volatile = start_embedded(tmp_path / "volatile", persist=False)
    try:
        r = connect(f"unix://{tmp_path / 'volatile' / 'redis.sock'}")
        assert r.config_get("save")["save"] == "" and r.config_get("appendonly")["appendonly"] == "no"
        r.close()
    finally:
        volatile.terminate()
        volatile.wait()
