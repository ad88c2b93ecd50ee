"""Slow clients (issue 8 #12): behind the nginx block `wxkf nginx-conf` prints, clients that trickle
their requests a byte at a time hold nginx connections, not gunicorn's sync workers, and WeChat's
pushes keep being acknowledged at once. `.ci/run` installs nginx; elsewhere the test needs it."""
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import Stack, free_port, wait_for
from wxkf.deploy import nginx_conf

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


@pytest.fixture
def nginx(tmp_path):
    if NGINX is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed: .ci/run installs it")
        pytest.skip("nginx is not installed (apt-get install nginx)")

    def start(upstream, max_body_bytes=262144):
        port = free_port()
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp_path / d).mkdir(exist_ok=True)
        server = nginx_conf(upstream=upstream, listen=f"127.0.0.1:{port}", max_body_bytes=max_body_bytes)
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            ("user root;\n" if os.geteuid() == 0 else "") +
            f"daemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
            "events { worker_connections 256; }\n"
            f"http {{\naccess_log off;\nclient_body_temp_path {tmp_path}/body;\nproxy_temp_path {tmp_path}/proxy;\n"
            f"fastcgi_temp_path {tmp_path}/fastcgi;\nuwsgi_temp_path {tmp_path}/uwsgi;\nscgi_temp_path {tmp_path}/scgi;\n"
            f"{server}\n}}\n")
        proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)

        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return proc.poll() is not None and pytest.fail((tmp_path / "error.log").read_text())
        assert wait_for(up, timeout=10)
        return f"http://127.0.0.1:{port}"

    procs = []
    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


class Trickle:
    """Clients that send a request one byte a second and never finish (slowloris)."""

    def __init__(self, url, n, path):
        host, port = url.split("//")[1].split(":")
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/xml\r\n"
                f"Content-Length: 4096\r\n\r\n").encode()
        self.stop = threading.Event()
        self.socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(s, head), daemon=True) for s in self.socks]
        for t in self.threads:
            t.start()
        time.sleep(1.5)  # every trickling client has sent its first bytes

    def _run(self, sock, data):
        for i in range(10_000):
            if self.stop.is_set():
                return
            try:
                sock.sendall(data[i:i + 1] if i < len(data) else b"<")
            except OSError:
                return  # dropped by the server: what it should do
            self.stop.wait(1.0)

    def dropped(self):
        """How many were cut off by the server (closed, or answered 408 Request Time-out)."""
        n = 0
        for s in self.socks:
            s.settimeout(0.5)
            try:
                data = s.recv(64)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            n += data == b"" or data.startswith(b"HTTP/1.1 408")
        return n

    def close(self):
        self.stop.set()
        for s in self.socks:
            s.close()


def test_trickling_clients_do_not_stop_pushes_behind_nginx(redis_url, sandbox, builder, tmp_path, r, nginx):
    """Twelve clients trickle requests to the webhook through nginx while gunicorn has two workers:
    a push from WeChat is still acknowledged (200 within WeChat's 5 s), and the trickling clients
    are dropped by nginx, never handed to gunicorn."""
    (tmp_path / "stack").mkdir()
    stack = Stack(redis_url, sandbox, tmp_path / "stack", web_workers=2)
    try:
        front = nginx(f"127.0.0.1:{stack.port}")
        trickle = Trickle(front, 12, "/wechat?signature=x&timestamp=1&nonce=1")
        try:
            sandbox.state.interact("o_slow")
            url, body = builder.request(builder.message("o_slow", text="发票怎么开"))
            started = time.monotonic()
            reply = requests.post(front + url, data=body, timeout=5)
            assert reply.status_code == 200 and reply.text == "success"
            assert time.monotonic() - started < 5
            assert requests.get(front + "/healthz", timeout=5).status_code in (200, 503)  # gunicorn answers
            time.sleep(5)  # past client_header_timeout: nginx cuts the tricklers off itself
            assert trickle.dropped() == 12
        finally:
            trickle.close()
    finally:
        stack.stop()


def test_an_oversize_push_is_refused_by_nginx_before_gunicorn(redis_url, sandbox, tmp_path, r, nginx):
    """The proxy enforces the same body limit as wxkf (max_body_bytes): 413, and gunicorn never reads it."""
    front = nginx("127.0.0.1:9", max_body_bytes=262144)  # nothing listens upstream: only nginx can answer
    assert requests.post(front + "/wechat", data=b"x" * 300_000, timeout=5).status_code == 413


def test_nginx_conf_command_prints_the_block_for_this_configuration():
    from click.testing import CliRunner

    from wxkf.cli import main
    out = CliRunner().invoke(main, ["nginx-conf", "--server-name", "kf.example.com"],
                             env={"WXKF_BIND": "127.0.0.1:8123", "WXKF_MAX_BODY_BYTES": "65536"})
    assert out.exit_code == 0, out.output
    assert "server 127.0.0.1:8123;" in out.output and "server_name kf.example.com;" in out.output
    assert "client_max_body_size 64k;" in out.output and "proxy_request_buffering on;" in out.output
