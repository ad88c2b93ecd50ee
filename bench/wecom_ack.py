"""How long `/wecom/kf` takes to acknowledge a WeCom callback, in one process (no HTTP server).

    .venv/bin/python bench/wecom_ack.py [N]

Posts N encrypted `kf_msg_or_event` callbacks (as WeCom builds them, a new Token each) to the app's
WSGI interface against an embedded Redis, and prints the median, p99 and maximum milliseconds per
request: signature, timestamp, decryption, parsing and the one Redis call that records the wake-up.
WeCom's deadline is 5 s; the pull happens later, in a worker.
"""
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wxkf import config as config_mod, create_app  # noqa: E402
from wxkf.services import setup_logging  # noqa: E402
from wxkf.store import start_embedded  # noqa: E402
from wxkf.wecom.simulate import KfCallbackBuilder  # noqa: E402


def main(n=5000):
    tmp = Path(tempfile.mkdtemp(prefix="wxkf-wecom-ack-"))
    redis_proc = start_embedded(tmp)
    try:
        cfg = config_mod.load(env={}, redis_url=f"unix://{tmp / 'redis.sock'}")
        setup_logging("INFO")
        logging.getLogger().handlers[0].stream = open("/dev/null", "w")
        client = create_app(cfg).test_client()
        builder = KfCallbackBuilder(cfg.kf_token, cfg.kf_aes_key, cfg.corpid)
        requests = [builder.request(builder.event(f"wkBench{i % 20:04d}", f"ENC{i:08d}")) for i in range(n)]
        times = []
        for path, body in requests:
            started = time.perf_counter()
            status = client.post(path, data=body).status_code
            times.append((time.perf_counter() - started) * 1000)
            assert status == 200, status
        times.sort()
        print(f"/wecom/kf callbacks: {n}, median {statistics.median(times):.2f} ms, "
              f"p99 {times[int(0.99 * (n - 1))]:.2f} ms, max {times[-1]:.2f} ms")
    finally:
        redis_proc.terminate()
        redis_proc.wait(5)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
