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
import socket
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

BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port, deadline=20):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def request_bytes(path, body, port):
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


def one(port, raw):
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    elapsed = time.perf_counter() - started
    ok = data.startswith(b"HTTP/1.1 200") and data.endswith(b"success")
    return elapsed, ok


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
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    cfg = config_mod.load(env={})
    tmp = Path(tempfile.mkdtemp(prefix="wxkf-bench-"))
    redis_proc = start_embedded(tmp, persist=False)
    redis_url = f"unix://{tmp / 'redis.sock'}"
    wx_port, bare_port = free_port(), free_port()
    env = dict(os.environ, WXKF_REDIS_URL=redis_url, WXKF_BIND=f"127.0.0.1:{wx_port}",
               WXKF_WEB_WORKERS=str(args.workers))
    server_log = open(tmp / "serve.log", "wb")  # INFO, one line per push, as run.sh runs it
    procs = [
        subprocess.Popen([str(BIN / "wxkf"), "serve"], env=env, stdout=server_log, stderr=subprocess.STDOUT),
        subprocess.Popen([str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{bare_port}", "--workers", str(args.workers),
                          "--worker-class", "sync", "--chdir", str(ROOT / "bench"), "bare_app:app"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        wait_up(wx_port)
        wait_up(bare_port)
        builder = PushBuilder(cfg.token, cfg.aes_key, cfg.appid)
        n_closed = int(args.seconds * 600)
        n_open = int(args.seconds * args.rate)

        def pushes(n, mode, port):
            out = []
            for i in range(n):
                fields = builder.message(f"o_bench_{i % 500}", text="我的快递到哪了")
                path, body = builder.request(fields, mode=mode)
                out.append(request_bytes(path, body, port))
            return out

        rows = []
        print(f"cpu: {os.cpu_count()} cores; gunicorn sync workers: {args.workers}; load: 1 separate process on loopback")
        for name, mode, port in (("bare flask", "plain", bare_port), ("wxkf plaintext", "plain", wx_port),
                                 ("wxkf safe mode", "safe", wx_port)):
            warm = pushes(200, mode, port)
            drive(closed_loop, port, warm, args.concurrency)
            closed = drive(closed_loop, port, pushes(n_closed, mode, port), args.concurrency)
            opened = drive(open_loop, port, pushes(n_open, mode, port), args.rate)
            rows.append({
                "scenario": name,
                "max_pushes_per_s": round(len(closed["lat"]) / closed["seconds"], 1),
                "closed_p50_ms": round(pct(closed["lat"], 0.5), 2),
                "closed_p99_ms": round(pct(closed["lat"], 0.99), 2),
                f"at_{int(args.rate)}_per_s_p50_ms": round(pct(opened["lat"], 0.5), 2),
                f"at_{int(args.rate)}_per_s_p99_ms": round(pct(opened["lat"], 0.99), 2),
                "errors": closed["errors"] + opened["errors"],
            })
        base = rows[0]["max_pushes_per_s"]
        for row in rows:
            row["vs_bare"] = f"{100 * row['max_pushes_per_s'] / base:.0f}%"
        keys = list(rows[0])
        widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
        print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
        for r in rows:
            print("  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))
        print(json.dumps(rows))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        redis_proc.terminate()
        redis_proc.wait(5)


if __name__ == "__main__":
    main()
