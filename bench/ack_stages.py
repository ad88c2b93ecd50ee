"""Where a push's acknowledgement time goes, stage by stage, in one process (no HTTP server).

    .venv/bin/python bench/ack_stages.py [plain|safe]

Runs the webhook's WSGI app on pre-built pushes against an embedded Redis and prints the median
microseconds of each stage: reading the body, verifying and decrypting, building the record,
the dedup+enqueue round trip to Redis, the log line, and the whole request.
"""
import functools
import io
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
from wxkf.wechat import push, webhook  # noqa: E402
from wxkf.wechat.simulate import PushBuilder  # noqa: E402


def main(mode="plain", n=8000):
    tmp = Path(tempfile.mkdtemp(prefix="wxkf-stages-"))
    redis_proc = start_embedded(tmp)
    cfg = config_mod.load(env={}, redis_url=f"unix://{tmp / 'redis.sock'}")
    setup_logging("INFO")
    logging.getLogger().handlers[0].stream = open("/dev/null", "w")
    app = create_app(cfg)
    svc = app.extensions["wxkf"]
    samples = {}

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            started = time.perf_counter_ns()
            try:
                return fn(*a, **k)
            finally:
                samples.setdefault(name, []).append(time.perf_counter_ns() - started)
        return wrapper

    webhook.read_limited = timed("read body", webhook.read_limited)
    webhook.decode_push = timed("verify+decrypt+parse", webhook.decode_push)
    webhook.push.to_inbound = timed("build record", push.to_inbound)
    svc.inbox.enqueue = timed("dedup+enqueue (Redis)", svc.inbox.enqueue)
    webhook.log.info = timed("log line", webhook.log.info)
    app.wsgi_app = timed("whole request", app.wsgi_app)
    builder = PushBuilder(cfg.token, cfg.aes_key, cfg.appid)
    for i in range(n):
        path, body = builder.request(builder.message(f"o{i % 50}", text="我的快递到哪了"), mode=mode)
        route, query = path.split("?")
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": route, "QUERY_STRING": query, "SERVER_NAME": "x",
                   "SERVER_PORT": "80", "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
                   "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
        out = app(environ, lambda *a: None)
        b"".join(out)
        out.close()
    print(f"{mode} pushes, median µs per stage over {n - n // 4} (first {n // 4} are warm-up):")
    for name, values in samples.items():
        print(f"  {name:24s} {statistics.median(values[n // 4:]) / 1000:8.1f}")
    redis_proc.terminate()


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["plain"]))
