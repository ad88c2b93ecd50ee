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
