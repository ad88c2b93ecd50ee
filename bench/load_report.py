"""Load report: the stack as in production, shoppers writing for minutes, measured over time.

    .venv/bin/python bench/load_report.py [--rate 500] [--seconds 600] [--shoppers 1000] [--web-workers 4]
                                          [--svg docs/load.svg]

An embedded Redis with AOF, the WeChat sandbox, `wxkf serve` (4 sync workers) and one `wxkf worker`
(the bundled model on, at its default CPU priority: `worker_idle`), as run.sh starts them. Two phases:

1. Reply latency: 60 messages at one every 2 s (half the word matching is sure of, half the model
   reads), each timed from the push to the reply reaching the sandbox.
2. Flood: `--rate` safe-mode pushes a second for `--seconds` from 1,000 shoppers in an open loop
   (sent on schedule whatever the server does): 80% text, 10% events (user_enter_tempsession), 5%
   images, 5% WeChat retries (an earlier push sent again byte for byte). The pushes are built before
   the flood and sent from one asyncio loop, so the generator's own CPU and threads disturb the box
   as little as they can. Every 10 s: pushes acknowledged, ack p50/p99, how far the generator fell
   behind its schedule, queue depth, replies sent, and the CPU each part of the stack used. At the
   end: resident memory of the web workers, the worker and Redis; every acknowledged push either
   answered or still queued, and no push answered twice.

Prints a table per 10 s and a summary; with `--svg` writes the latency-over-time picture.
"""
import argparse
import asyncio
import collections
import json
import os
import random
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


def build_flood(builder, port, args, base_wall):
    """The flood's pushes in order: (seconds after the start, the whole HTTP request, dedup key), and
    the keys of the distinct pushes. 80% text, 10% events, 5% images, 5% WeChat retries (an earlier
    push again, byte for byte, within seconds)."""
    items, sent_pushes = [], []
    earlier = collections.deque(maxlen=5000)  # WeChat retries within seconds, inside the timestamp window
    rnd = random.Random(7)
    for i in range(int(args.rate * args.seconds)):
        offset = i / args.rate
        roll = rnd.random()
        openid = f"o_load_{rnd.randrange(args.shoppers)}"
        if roll < 0.05 and earlier:
            raw, key = earlier[rnd.randrange(len(earlier))]  # WeChat retrying a push
        else:
            stamp = int(base_wall + offset)
            if roll < 0.15:
                fields = builder.message(openid, event="user_enter_tempsession", create_time=stamp)
            elif roll < 0.20:
                fields = builder.message(openid, msg_type="image", PicUrl="http://x/y.jpg", MediaId="m1",
                                         create_time=stamp)
            else:
                fields = builder.message(openid, text=rnd.choice(SURE + MODEL), msg_id=10_000_000 + i,
                                         create_time=stamp)
            path, body = builder.request(fields, mode="safe", timestamp=stamp)
            raw = request_bytes(path, body, port)
            key = ("msg", fields.get("MsgId")) if "MsgId" in fields else ("ev", openid, i)
            earlier.append((raw, key))
            sent_pushes.append(key)
        items.append((offset, raw, key))
    return items, sent_pushes


async def flood(port, items, results):
    """Send each push at its time whatever the server does (an open loop, one connection per push as
    WeChat opens), appending (lag behind schedule, latency, acknowledged, key) to `results`. One
    asyncio loop: no thread in this process competes for the interpreter while a response is timed."""
    loop = asyncio.get_running_loop()

    async def one(due, raw, key):
        sent = loop.time()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(raw)
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            ok = data.startswith(b"HTTP/1.1 200")
        except (OSError, asyncio.TimeoutError):
            ok = False
        results.append((sent - due, loop.time() - sent, ok, key))

    start, pending = loop.time(), set()
    for offset, raw, key in items:
        wait = start + offset - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        task = asyncio.create_task(one(start + offset, raw, key))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


def cpu_seconds(pids):
    """User + system CPU seconds of `pids` (with their threads and reaped children)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


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
    ap.add_argument("--web-workers", type=int, default=4, help="gunicorn sync workers (web_workers)")
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
    env = dict(os.environ, WXKF_REDIS_URL=redis_url, WXKF_BIND=f"127.0.0.1:{port}", WXKF_WEB_WORKERS=str(args.web_workers),
               WXKF_API_BASE=f"http://127.0.0.1:{sandbox.server_port}", WXKF_VAR_DIR=str(tmp / "var"),
               WXKF_MODEL=str(cfg.model_path), WXKF_LOG_LEVEL="WARNING")
    log = open(tmp / "stack.log", "wb")
    web = subprocess.Popen([str(BIN / "wxkf"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = subprocess.Popen([str(BIN / "wxkf"), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    r = connect(redis_url)
    r.config_set("latency-monitor-threshold", 20)  # Redis records its own stalls over 20 ms (LATENCY LATEST)
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
        # Every push is built (encrypted, signed, stamped with the second it is due) before the flood
        # starts, so the generator spends its CPU on the box before, not during, the measurement:
        # WeChat builds its pushes on its own machines.
        base_wall = time.time() + args.rate * args.seconds * 110e-6 + 5
        items, sent_pushes = build_flood(builder, port, args, base_wall)
        while time.time() < base_wall:
            time.sleep(0.01)
        results, samples = [], []
        stop = threading.Event()
        start = time.monotonic()
        procs = {"web": lambda: [web.pid] + children(web.pid), "worker": lambda: [worker.pid],
                 "redis": lambda: [redis_proc.pid], "generator": lambda: [os.getpid()]}

        def monitor():
            last, cpu_before = 0, {name: cpu_seconds(pids()) for name, pids in procs.items()}
            while not stop.wait(10):
                window = results[last:]
                last += len(window)
                depth, age = _depth(r)
                lats = sorted(x[1] * 1000 for x in window if x[2])
                cpu_now = {name: cpu_seconds(pids()) for name, pids in procs.items()}
                samples.append({"t": round(time.monotonic() - start), "acked": sum(1 for x in window if x[2]),
                                "failed": sum(1 for x in window if not x[2]),
                                "p50": lats[len(lats) // 2] if lats else 0.0,
                                "p99": lats[int(len(lats) * 0.99)] if lats else 0.0,
                                "lag_max_ms": round(max((x[0] for x in window), default=0) * 1000, 1),
                                "depth": depth, "oldest_s": round(age), "replies": len(state.messages) - answered_before,
                                "cpu": {k: round((cpu_now[k] - cpu_before[k]) / 10, 2) for k in cpu_now}})
                cpu_before = cpu_now
                print(json.dumps(samples[-1]), flush=True)
        mon = threading.Thread(target=monitor, daemon=True)
        mon.start()
        asyncio.run(flood(port, items, results))
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
        lags = sorted(x[0] * 1000 for x in results)
        print(f"generator behind schedule: p99 {lags[int(len(lags) * 0.99)]:.1f} ms, max {lags[-1]:.1f} ms")
        for name in samples[0]["cpu"]:
            print(f"CPU, mean over the 10-s windows: {name} {statistics.mean(s['cpu'][name] for s in samples):.2f} cores")
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
        print(f"memory at the end: web {web_rss:.0f} MiB (master + {args.web_workers} workers), worker {rss_mb(worker.pid):.0f} MiB, "
              f"redis {redis_rss:.0f} MiB RSS ({info['used_memory_human']} used)")
        stalls = r.execute_command("LATENCY", "LATEST")
        print("Redis's own stalls over 20 ms (event, times seen as worst: latest ms, worst ms): " + (", ".join(
            f"{e[0] if isinstance(e[0], str) else e[0].decode()}: {e[2]} ms, worst {e[3]} ms" for e in stalls) or "none")
            + f"; writes delayed by a slow AOF fsync: {r.info('persistence').get('aof_delayed_fsync', 0)}")
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
