"""Load report: the stack as in production, shoppers writing for minutes, measured over time.

    .venv/bin/python bench/load_report.py [--rate 500] [--seconds 600] [--shoppers 1000] [--svg docs/load.svg]

An embedded Redis with AOF, the WeChat sandbox, `wxkf serve` (4 sync workers) and one `wxkf worker`
(the bundled model on, `worker_nice` 10), as run.sh starts them. Two phases:

1. Reply latency: 60 messages at one every 2 s (half the word matching is sure of, half the model
   reads), each timed from the push to the reply reaching the sandbox.
2. Flood: `--rate` safe-mode pushes a second for `--seconds` from 1,000 shoppers in an open loop
   (sent on schedule whatever the server does): 80% text, 10% events (user_enter_tempsession), 5%
   images, 5% WeChat retries (an earlier push sent again byte for byte). Every 10 s: pushes
   acknowledged, ack p50/p99, queue depth, replies sent. At the end: resident memory of the web
   workers, the worker and Redis; every acknowledged push either answered or still queued, and no
   push answered twice.

Prints a table per 10 s and a summary; with `--svg` writes the latency-over-time picture.
"""
import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from wxkf import config as config_mod  # noqa: E402
from wxkf.store import connect, start_embedded  # noqa: E402
from wxkf.wechat.simulate import PushBuilder  # noqa: E402
from _common import exchange, free_port, request_bytes, wait_up  # noqa: E402  (bench/, the script's folder)

SURE = ["我的快递到哪了", "怎么申请退款", "可以开发票吗", "地址填错了怎么改"]
MODEL = ["东西收到是坏的怎么办", "能不能便宜一点", "衣服小了想换大一号", "我付了钱但是订单显示没付"]


def post(port, path, body):
    started = time.perf_counter()
    try:
        elapsed, data = exchange(port, request_bytes(path, body, port), timeout=10)
    except OSError:
        return time.perf_counter() - started, False
    return elapsed, data.startswith(b"HTTP/1.1 200")


def rss_mb(pid):
    try:
        return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return 0.0


def children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def svg(rows, path):
    """Ack p50/p99 (ms) and queue depth over time, as a small SVG."""
    w, h, pad = 720, 260, 40
    t_max = max(r["t"] for r in rows) or 1
    lat_max = max(max(r["p99"] for r in rows), 1)
    depth_max = max(max(r["depth"] for r in rows), 1)

    def line(key, top, colour):
        pts = " ".join(f"{pad + (w - 2 * pad) * r['t'] / t_max:.1f},{h - pad - (h - 2 * pad) * r[key] / top:.1f}"
                       for r in rows)
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>'
    return Path(path).write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">'
        f'<rect width="{w}" height="{h}" fill="#fff"/>'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#999"/>'
        + line("p50", lat_max, "#07c160") + line("p99", lat_max, "#d93025") + line("depth", depth_max, "#1a73e8")
        + f'<text x="{pad}" y="{pad - 10}">ack latency (green p50, red p99; top = {lat_max:.0f} ms) and queue depth '
          f'(blue; top = {depth_max:,.0f}) over {t_max:.0f} s</text>'
        f'<text x="{w - pad - 40}" y="{h - pad + 16}">time (s)</text></svg>')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--shoppers", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=32)
    ap.add_argument("--svg", default=None)
    ap.add_argument("--latency-messages", type=int, default=60)
    args = ap.parse_args()

    import logging
    from werkzeug.serving import make_server
    from wxkf.wechat.sandbox import create_sandbox
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    cfg = config_mod.load(env={})
    tmp = Path(tempfile.mkdtemp(prefix="wxkf-load-"))
    redis_proc = start_embedded(tmp)
    redis_url = f"unix://{tmp / 'redis.sock'}"
    sb_app = create_sandbox(cfg.appid, cfg.secret)
    state = sb_app.extensions["sandbox"]
    state.daily_send_quota = 10_000_000
    sandbox = make_server("127.0.0.1", 0, sb_app, threaded=True)
    threading.Thread(target=sandbox.serve_forever, daemon=True).start()
    port = free_port()
    env = dict(os.environ, WXKF_REDIS_URL=redis_url, WXKF_BIND=f"127.0.0.1:{port}", WXKF_WEB_WORKERS="4",
               WXKF_API_BASE=f"http://127.0.0.1:{sandbox.server_port}", WXKF_VAR_DIR=str(tmp / "var"),
               WXKF_MODEL=str(cfg.model_path), WXKF_LOG_LEVEL="WARNING")
    log = open(tmp / "stack.log", "wb")
    web = subprocess.Popen([str(BIN / "wxkf"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = subprocess.Popen([str(BIN / "wxkf"), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    r = connect(redis_url)
    builder = PushBuilder(cfg.token, cfg.aes_key, cfg.appid)
    try:
        wait_up(port)
        for i in range(args.shoppers):
            state.interact(f"o_load_{i}")
        state.interact("o_warm")  # wait until the worker has loaded the model and answers
        path, body = builder.request(builder.message("o_warm", text=MODEL[0]), mode="safe")
        post(port, path, body)
        deadline = time.monotonic() + 180
        while not any(m["touser"] == "o_warm" for m in list(state.messages)) and time.monotonic() < deadline:
            time.sleep(0.2)
        # -- phase 1: reply latency, one message every 2 s ------------------------------------------
        sent_at, kind_of = {}, {}
        for i in range(args.latency_messages):
            openid, kind = f"o_lat_{i}", ("knowledge" if i % 2 == 0 else "model")
            state.interact(openid)
            text = (SURE if kind == "knowledge" else MODEL)[(i // 2) % 4]
            path, body = builder.request(builder.message(openid, text=text), mode="safe")
            sent_at[openid], kind_of[openid] = time.time(), kind
            post(port, path, body)
            time.sleep(2)
        deadline = time.monotonic() + 60
        while len({m["touser"] for m in list(state.messages) if m["touser"].startswith("o_lat_")}) < args.latency_messages \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        reply = {"knowledge": [], "model": []}
        for m in list(state.messages):
            if m["touser"] in sent_at and m.get("msgtype") == "text":
                reply[kind_of[m["touser"]]].append((m["_at"] - sent_at.pop(m["touser"])) * 1000)
        # -- phase 2: the flood ----------------------------------------------------------------------
        answered_before = len(state.messages)
        jobs_before = _jobs(r)
        jobs, results, sent_pushes = queue.Queue(maxsize=20000), [], []
        lock = threading.Lock()

        def sender():
            while True:
                item = jobs.get()
                if item is None:
                    return
                due, path, body, push_key = item
                lat, ok = post(port, path, body)
                with lock:
                    results.append((due, lat, ok, push_key))

        threads = [threading.Thread(target=sender, daemon=True) for _ in range(args.senders)]
        for t in threads:
            t.start()
        samples, stop = [], threading.Event()
        start = time.monotonic()

        def monitor():
            last = 0
            while not stop.wait(10):
                with lock:
                    window = [x for x in results[last:]]
                    last = len(results)
                depth, age = _depth(r)
                lats = sorted(x[1] * 1000 for x in window if x[2])
                samples.append({"t": round(time.monotonic() - start), "acked": sum(1 for x in window if x[2]),
                                "failed": sum(1 for x in window if not x[2]),
                                "p50": lats[len(lats) // 2] if lats else 0.0,
                                "p99": lats[int(len(lats) * 0.99)] if lats else 0.0,
                                "depth": depth, "oldest_s": round(age), "replies": len(state.messages) - answered_before})
                print(json.dumps(samples[-1]), flush=True)
        mon = threading.Thread(target=monitor, daemon=True)
        mon.start()
        n = int(args.rate * args.seconds)
        import collections
        import random
        earlier = collections.deque(maxlen=5000)  # WeChat retries within seconds, inside the timestamp window
        rnd = random.Random(7)
        for i in range(n):
            due = start + i / args.rate
            roll = rnd.random()
            openid = f"o_load_{rnd.randrange(args.shoppers)}"
            if roll < 0.05 and earlier:
                path, body, key = earlier[rnd.randrange(len(earlier))]  # WeChat retrying a push
            else:
                if roll < 0.15:
                    fields = builder.message(openid, event="user_enter_tempsession")
                elif roll < 0.20:
                    fields = builder.message(openid, msg_type="image", PicUrl="http://x/y.jpg", MediaId="m1")
                else:
                    fields = builder.message(openid, text=rnd.choice(SURE + MODEL), msg_id=10_000_000 + i)
                path, body = builder.request(fields, mode="safe")
                key = ("msg", fields.get("MsgId")) if "MsgId" in fields else ("ev", openid, i)
                earlier.append((path, body, key))
                sent_pushes.append(key)
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            jobs.put((due, path, body, key))
        for _ in threads:
            jobs.put(None)
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        stop.set()
        mon.join()
        # -- results ---------------------------------------------------------------------------------
        acked = [x for x in results if x[2]]
        lats = sorted(x[1] * 1000 for x in acked)
        late = sum(1 for x in results if x[1] > 5)
        depth, age = _depth(r)
        replies = [m for m in list(state.messages)[answered_before:]]
        per_push = {}
        for m in replies:
            per_push[m["touser"]] = per_push.get(m["touser"], 0) + 1
        web_rss = sum(rss_mb(p) for p in children(web.pid)) + rss_mb(web.pid)
        redis_rss = rss_mb(redis_proc.pid)
        info = r.info("memory")
        print()
        print(f"flood: {len(results)} pushes in {elapsed:.0f} s ({len(results) / elapsed:.0f}/s offered), "
              f"{len(acked)} acknowledged ({len(acked) / elapsed:.0f}/s), {len(results) - len(acked)} not, "
              f"{late} over 5 s")
        print(f"ack latency: p50 {lats[len(lats) // 2]:.1f} ms, p99 {lats[int(len(lats) * 0.99)]:.1f} ms, "
              f"max {lats[-1]:.1f} ms")
        print(f"replies during the flood: {len(replies)} ({len(replies) / elapsed:.1f}/s); queue at the end: "
              f"{depth} entries, oldest {age:.0f} s")
        unique = len(set(sent_pushes))
        print(f"distinct pushes sent: {unique}; queued by wxkf (handled during the flood + still queued): "
              f"{_jobs(r) - jobs_before + depth} (two events of one shopper in the same second share WeChat's "
              f"dedup key, FromUserName + CreateTime, and count once)")
        jobs = _jobs(r)
        print(f"worker jobs during the whole run (both phases): {jobs}; replies the sandbox received: "
              f"{len(state.messages)} (each job answers with at most one message: more replies than jobs would "
              f"mean a push answered twice)")
        for kind, values in reply.items():
            if values:
                print(f"push -> reply, {kind} answers: p50 {statistics.median(values):.0f} ms, "
                      f"p95 {sorted(values)[int(len(values) * 0.95)]:.0f} ms ({len(values)} messages, idle box)")
        print(f"memory at the end: web {web_rss:.0f} MiB (master + 4 workers), worker {rss_mb(worker.pid):.0f} MiB, "
              f"redis {redis_rss:.0f} MiB RSS ({info['used_memory_human']} used)")
        if args.svg and samples:
            svg(samples, args.svg)
            print(f"picture: {args.svg}")
    finally:
        for p in (web, worker):
            p.terminate()
        for p in (web, worker):
            p.wait(15)
        redis_proc.terminate()
        sandbox.shutdown()


def _depth(r):
    from wxkf.inbox import Inbox
    return Inbox(r).stats()


def _jobs(r):
    """Pushes the worker handled, from wxkf's shared metrics."""
    from wxkf import keys
    return sum(int(float(v)) for k, v in r.hgetall(keys.METRICS).items() if k.startswith("wxkf_jobs_total"))


if __name__ == "__main__":
    main()
