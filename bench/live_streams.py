"""Open console streams against the webhook: what they cost, and how fast a change reaches them.

    .venv/bin/python bench/live_streams.py [--streams 60] [--pushes 200]

Starts an embedded Redis, the WeChat sandbox, `wxkf serve` (2 sync workers, as a small shop runs it),
`wxkf live` and one `wxkf worker`, then:
1. acknowledges `--pushes` plaintext pushes one after another with no stream open (latency of each);
2. opens `--streams` console event streams on the live process (each an agent's open page) and
   acknowledges the same number of pushes again;
3. measures, for 50 pushes, the time from sending the push to the notice arriving on every open
   stream (the worker decides and answers in between: this is what an agent waits to see it);
4. prints the live process's resident memory and the webhook's answer to a stream request.
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from wxkf import config as config_mod  # noqa: E402
from wxkf.store import start_embedded  # noqa: E402
from wxkf.wechat.sandbox import create_sandbox  # noqa: E402
from wxkf.wechat.simulate import PushBuilder  # noqa: E402
from _common import free_port  # noqa: E402  (bench/, the script's folder)


def wait_http(url, deadline=30):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


class Stream:
    def __init__(self, host, port, path):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.text = ""
        self.lock = threading.Lock()
        self.seen = {}  # openid -> time its first notice arrived
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while chunk := self.sock.recv(65536):
                now = time.perf_counter()
                with self.lock:
                    self.text += chunk.decode("utf-8", "replace")
                    for data in re.findall(r"data: (\{.*\})", chunk.decode("utf-8", "replace")):
                        for openid in json.loads(data).get("changed", []):
                            self.seen.setdefault(openid, now)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def acks(url, builder, sandbox_state, n, tag):
    out = []
    for i in range(n):
        openid = f"o_{tag}_{i}"
        sandbox_state.interact(openid)
        path, body = builder.request(builder.message(openid, text="你好"), mode="plain")
        started = time.perf_counter()
        resp = requests.post(url + path, data=body, timeout=5)
        out.append((time.perf_counter() - started) * 1000)
        assert resp.status_code == 200, resp.text
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=60)
    ap.add_argument("--pushes", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wxkf-live-"))
    redis_proc = start_embedded(tmp, persist=False)
    demo = config_mod.load(env={})
    import logging
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from werkzeug.serving import make_server
    sb_app = create_sandbox(demo.appid, demo.secret)
    sb = make_server("127.0.0.1", 0, sb_app, threaded=True)
    threading.Thread(target=sb.serve_forever, daemon=True).start()
    web_port, live_port = free_port(), free_port()
    env = dict(os.environ, WXKF_CONFIG=str(ROOT / "conf" / "wxkf.toml"), WXKF_REDIS_URL=f"unix://{tmp / 'redis.sock'}",
               WXKF_API_BASE=f"http://127.0.0.1:{sb.server_port}", WXKF_BIND=f"127.0.0.1:{web_port}",
               WXKF_LIVE_BIND=f"127.0.0.1:{live_port}", WXKF_WEB_WORKERS="2", WXKF_PLAINTEXT_PUSHES="true",
               WXKF_LOG_LEVEL="WARNING", WXKF_MODEL_SCORING="false", WXKF_GENERATION="false",
               WXKF_VAR_DIR=str(tmp / "var"))
    procs = [subprocess.Popen([str(BIN / "wxkf"), cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True) for cmd in ("serve", "live", "worker")]
    streams = []
    try:
        web, live = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{live_port}"
        wait_http(web + "/healthz")
        wait_http(live + "/healthz")
        subprocess.run([str(BIN / "wxkf"), "user", "add", "bench", "--role", "agent", "--password-stdin"], env=env,
                       input="bench password\n", text=True, check=True, capture_output=True)
        s = requests.Session()
        token = re.search(r'name="csrf_token" value="([^"]+)"', s.get(web + "/console/login").text).group(1)
        page = s.post(web + "/console/login", data={"name": "bench", "password": "bench password",
                                                    "csrf_token": token}).text
        ticket = json.loads(re.search(r'encodeURIComponent\(("[^"]+")\)', page).group(1))
        builder = PushBuilder(demo.token, demo.aes_key, demo.appid)
        state = sb_app.extensions["sandbox"]
        acks(web, builder, state, 20, "warm")
        before = acks(web, builder, state, args.pushes, "before")
        streams = [Stream("127.0.0.1", live_port, f"/console/events?t={ticket}") for _ in range(args.streams)]
        end = time.monotonic() + 20
        while not all(": open" in st.text for st in streams):
            if time.monotonic() > end:
                raise RuntimeError(f"only {sum(': open' in st.text for st in streams)} streams opened")
            time.sleep(0.05)
        during = acks(web, builder, state, args.pushes, "during")
        end = time.monotonic() + 120  # let the worker answer those first: an agent's wait, not a backlog
        while len({m["touser"] for m in list(state.messages) if m["touser"].startswith("o_during_")}) < args.pushes:
            if time.monotonic() > end:
                raise RuntimeError("the worker did not answer the pushes")
            time.sleep(0.05)
        notice = []
        for i in range(50):
            openid = f"o_notice_{i}"
            state.interact(openid)
            path, body = builder.request(builder.message(openid, text="你好"), mode="plain")
            sent = time.perf_counter()
            requests.post(web + path, data=body, timeout=5)
            end = time.monotonic() + 10
            while not all(openid in st.seen for st in streams) and time.monotonic() < end:
                time.sleep(0.002)
            notice.append((max(st.seen.get(openid, float("inf")) for st in streams) - sent) * 1000)
        rss = int(Path(f"/proc/{_live_worker(procs[1].pid)}/status").read_text().split("VmRSS:")[1].split()[0])
        refused = requests.get(f"{web}/console/events?t={ticket}", timeout=5)
        print(f"acknowledgement, no stream open:      p50 {statistics.median(before):.1f} ms  "
              f"p99 {pct(before, 0.99):.1f} ms  max {max(before):.1f} ms  ({len(before)} pushes)")
        print(f"acknowledgement, {args.streams} streams open:     p50 {statistics.median(during):.1f} ms  "
              f"p99 {pct(during, 0.99):.1f} ms  max {max(during):.1f} ms  ({len(during)} pushes)")
        print(f"push sent -> notice on all {args.streams} streams: p50 {statistics.median(notice):.1f} ms  "
              f"p95 {pct(notice, 0.95):.1f} ms  max {max(notice):.1f} ms  (50 pushes; includes the worker's answer)")
        print(f"live process (1 gthread worker) resident memory with {args.streams} streams: {rss / 1024:.0f} MiB")
        print(f"a stream asked of the webhook process: HTTP {refused.status_code} "
              f"in {refused.elapsed.total_seconds() * 1000:.1f} ms (not held)")
    finally:
        for st in streams:
            st.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
        redis_proc.terminate()
        sb.shutdown()


def _live_worker(master_pid):
    """gunicorn's worker process under the live master."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return int(children[0]) if children else master_pid


if __name__ == "__main__":
    main()
