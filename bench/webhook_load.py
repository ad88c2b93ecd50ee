"""Webhook acknowledgement under load, beside a bare Flask+gunicorn app, in one run.

    .venv/bin/python bench/webhook_load.py [--seconds 10] [--rate 200] [--concurrency 8]

Starts an embedded Redis, wxkf's gunicorn exactly as `wxkf serve` does (2 sync workers) and a bare
Flask app under the same gunicorn settings, then drives each from a separate load process on
loopback with pushes carrying unique MsgIds: a closed loop at fixed concurrency for throughput, and
an open loop at a fixed rate for latency. Prints pushes/s and p50/p99 latency per scenario.
"""
import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wxkf import config as config_mod  # noqa: E402
from wxkf.store import start_embedded  # noqa: E402
from wxkf.wechat.simulate import PushBuilder  # noqa: E402
from _common import exchange, free_port, request_bytes, wait_up  # noqa: E402  (bench/, the script's folder)

BIN = Path(sys.executable).parent


def one(port, raw):
    elapsed, data = exchange(port, raw)
    return elapsed, data.startswith(b"HTTP/1.1 200") and data.endswith(b"success")


def closed_loop(port, requests, concurrency, out):
    """`concurrency` threads each send their share back to back."""
    import threading
    lat, errors = [], [0]
    chunks = [requests[i::concurrency] for i in range(concurrency)]

    def run(chunk):
        for raw in chunk:
            t, ok = one(port, raw)
            lat.append(t)
            if not ok:
                errors[0] += 1

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({"seconds": time.perf_counter() - started, "lat": lat, "errors": errors[0]})


def open_loop(port, requests, rate, out):
    """Send at a fixed rate whatever the server does (no coordinated omission)."""
    import threading
    lat, errors, threads = [], [0], []
    started = time.perf_counter()

    def run(raw):
        t, ok = one(port, raw)
        lat.append(t)
        if not ok:
            errors[0] += 1

    for i, raw in enumerate(requests):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        th = threading.Thread(target=run, args=(raw,))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    out.put({"seconds": time.perf_counter() - started, "lat": lat, "errors": errors[0]})


def wrk(port, lines, seconds, concurrency, tmp):
    """Closed loop with wrk (a C load generator): pushes/s and latency percentiles."""
    import re
    path = tmp / f"requests-{port}.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s",
                          str(ROOT / "bench" / "wrk_requests.lua"), f"http://127.0.0.1:{port}", "--", str(path), "2"],
                         capture_output=True, text=True, check=True).stdout

    def ms(label):
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": ms("50"), "p99": ms("99"), "errors": int(bad.group(1)) if bad else 0}


def drive(target, *args):
    out = mp.Queue()
    p = mp.Process(target=target, args=args + (out,))
    p.start()
    result = out.get()
    p.join()
    return result


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: web_workers from config)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--with-worker", action="store_true",
                    help="a wxkf worker (model on) answers a backlog of pushes through the sandbox meanwhile")
    ap.add_argument("--worker-nice", type=int, default=None,
                    help="the worker's nice (default: worker_nice; applies with WXKF_WORKER_IDLE=false)")
    ap.add_argument("--backlog", type=int, default=20000, help="pushes queued for the worker before measuring")
    ap.add_argument("--client", choices=("wrk", "python"), default=None,
                    help="closed-loop load generator (default: wrk when installed; the Python one costs the "
                         "box more CPU per request, which narrows the gap between the apps)")
    args = ap.parse_args()

    cfg = config_mod.load(env={})
    args.workers = args.workers or cfg.web_workers
    tmp = Path(tempfile.mkdtemp(prefix="wxkf-bench-"))
    redis_proc = start_embedded(tmp)  # AOF on, as run.sh runs it
    redis_url = f"unix://{tmp / 'redis.sock'}"
    wx_port, bare_port = free_port(), free_port()
    env = dict(os.environ, WXKF_REDIS_URL=redis_url, WXKF_BIND=f"127.0.0.1:{wx_port}",
               WXKF_WEB_WORKERS=str(args.workers), WXKF_PLAINTEXT_PUSHES="true")  # the plaintext scenario
    server_log = open(tmp / "serve.log", "wb")  # INFO, one line per push, as run.sh runs it
    sandbox = None
    if args.with_worker:
        import logging
        import threading
        from werkzeug.serving import make_server
        from wxkf.wechat.sandbox import create_sandbox
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        sb_app = create_sandbox(cfg.appid, cfg.secret)
        sb_app.extensions["sandbox"].daily_send_quota = 10_000_000
        sandbox = make_server("127.0.0.1", 0, sb_app, threaded=True)
        threading.Thread(target=sandbox.serve_forever, daemon=True).start()
        env.update(WXKF_API_BASE=f"http://127.0.0.1:{sandbox.server_port}", WXKF_VAR_DIR=str(tmp / "var"),
                   WXKF_MODEL=str(cfg.model_path))
        if args.worker_nice is not None:
            env["WXKF_WORKER_NICE"] = str(args.worker_nice)
    procs = [
        subprocess.Popen([str(BIN / "wxkf"), "serve"], env=env, stdout=server_log, stderr=subprocess.STDOUT),
        subprocess.Popen([str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{bare_port}", "--workers", str(args.workers),
                          "--worker-class", "sync", "--chdir", str(ROOT / "bench"), "bare_app:app"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        wait_up(wx_port)
        wait_up(bare_port)
        time.sleep(1)  # gunicorn's workers boot after the port opens
        builder = PushBuilder(cfg.token, cfg.aes_key, cfg.appid)
        counter = [0]

        def pushes(n, mode):
            out = []
            for _ in range(n):
                counter[0] += 1
                fields = builder.message(f"o_bench_{counter[0] % 500}", text="我的快递到哪了")
                # A nonce of its own: tens of thousands of pushes are signed within the same second,
                # and a random nonce shared by two of them is a replay wxkf refuses (403).
                out.append(builder.request(fields, mode=mode, nonce=f"{counter[0]}"))
            return out

        if args.with_worker:
            # A backlog the worker answers through every round (bare and wxkf alike, interleaved),
            # with phrasings the word matching is sure of and ones the model has to read.
            texts = ["我的快递到哪了", "东西收到是坏的怎么办", "能不能便宜一点", "你好，请问可以开发票吗",
                     "衣服小了想换大一号", "我付了钱但是订单显示没付"]
            state = sb_app.extensions["sandbox"]
            backlog = []
            for i in range(args.backlog):
                openid = f"o_backlog_{i}"
                state.interact(openid)
                backlog.append(request_bytes(*builder.request(builder.message(openid, text=texts[i % len(texts)]),
                                                              mode="safe", nonce=f"b{i}"), wx_port))
            drive(closed_loop, wx_port, backlog, 8)
            procs.append(subprocess.Popen([str(BIN / "wxkf"), "worker"], env=env, stdout=server_log,
                                          stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 120
            while not state.messages and time.monotonic() < deadline:  # the model loaded, answering
                time.sleep(0.2)
            answered_at_start = len(state.messages)
            started_measuring = time.monotonic()
        use_wrk = args.client == "wrk" or (args.client is None and shutil.which("wrk") is not None)
        print(f"cpu: {os.cpu_count()} cores; gunicorn sync workers: {args.workers}; "
              f"closed loop: {'wrk' if use_wrk else 'python'} -c{args.concurrency} for {args.seconds:.0f} s; "
              f"open loop: {args.rate:.0f} pushes/s for {args.seconds:.0f} s; {args.rounds} rounds, medians")
        scenarios = (("bare flask", "plain", bare_port), ("wxkf plaintext", "plain", wx_port),
                     ("wxkf safe mode", "safe", wx_port))
        results = {name: [] for name, _, _ in scenarios}
        for _ in range(args.rounds):
            for name, mode, port in scenarios:
                n_closed = int(args.seconds * 4000)
                if use_wrk:
                    lines = [path.encode() + b"\t" + body for path, body in pushes(n_closed, mode)]
                    closed = wrk(port, lines, int(args.seconds), args.concurrency, tmp)
                else:
                    reqs = [request_bytes(p_, b, port) for p_, b in pushes(int(args.seconds * 600), mode)]
                    c = drive(closed_loop, port, reqs, args.concurrency)
                    closed = {"rps": len(c["lat"]) / c["seconds"], "p50": pct(c["lat"], .5),
                              "p99": pct(c["lat"], .99), "errors": c["errors"]}
                reqs = [request_bytes(p_, b, port) for p_, b in pushes(int(args.seconds * args.rate), mode)]
                opened = drive(open_loop, port, reqs, args.rate)
                results[name].append({"rps": closed["rps"], "closed_p50": closed["p50"], "closed_p99": closed["p99"],
                                      "open_p50": pct(opened["lat"], .5), "open_p99": pct(opened["lat"], .99),
                                      "errors": closed["errors"] + opened["errors"]})
        rows = []
        for name, runs in results.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rows.append({"scenario": name, "pushes_per_s": round(med["rps"], 1),
                         "runs": "/".join(str(round(r["rps"])) for r in runs),
                         "closed_p50_ms": round(med["closed_p50"], 2), "closed_p99_ms": round(med["closed_p99"], 2),
                         f"p50_ms_at_{args.rate:.0f}/s": round(med["open_p50"], 2),
                         f"p99_ms_at_{args.rate:.0f}/s": round(med["open_p99"], 2),
                         "errors": sum(r["errors"] for r in runs)})
        base = rows[0]["pushes_per_s"]
        for row in rows:
            row["vs_bare"] = f"{100 * row['pushes_per_s'] / base:.0f}%"
        cols = list(rows[0])
        widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in cols]
        print("  ".join(k.ljust(w) for k, w in zip(cols, widths)))
        for r in rows:
            print("  ".join(str(r[k]).ljust(w) for k, w in zip(cols, widths)))
        print(json.dumps(rows, ensure_ascii=False))
        if args.with_worker:
            rate = (len(state.messages) - answered_at_start) / (time.monotonic() - started_measuring)
            idle = config_mod.load(env=env).worker_idle
            priority = "SCHED_IDLE" if idle else f"nice {env.get('WXKF_WORKER_NICE', cfg.worker_nice)}"
            print(f"meanwhile the worker ({priority}) answered {rate:.1f} messages/s")
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        redis_proc.terminate()
        redis_proc.wait(5)
        if sandbox is not None:
            sandbox.shutdown()


if __name__ == "__main__":
    main()
