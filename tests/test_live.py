"""Live updates (issue 12, item 7): change notices in Redis, the live process's event streams, and
the rule that an open stream never holds a worker that acknowledges WeChat's pushes."""
import json
import re
import socket
import threading

import pytest
import requests

from conftest import Stack, wait_for
from wxkf import create_app, keys, live
from wxkf.agents.accounts import Accounts
from wxkf.events import Hub


def _ids(found):
    return [(openid, what) for _, openid, what in found]


def test_transcript_lines_and_claims_publish_notices_without_text(svc, r):
    svc.handoffs.log("o_a", "shopper", "我的手机号是13800000000")
    svc.handoffs.log("o_a", "bot", "好的", once="push-1")
    svc.handoffs.log("o_a", "bot", "好的", once="push-1")  # a redelivered push: logged once, notified once
    svc.handoffs.touch("o_a", agent="alice", claim=True)
    entries = r.xrange(keys.EVENTS)
    assert [(f["o"], f["k"]) for _, f in entries] == [("o_a", "shopper"), ("o_a", "bot"), ("o_a", "state")]
    assert not any("138" in v for _, f in entries for v in f.values())  # ids only, never what was said


def test_hub_wakes_waiters_and_resumes_from_an_id(svc, r):
    hub = Hub(r, block_ms=100).start()
    start = hub.last_id()
    got = []
    t = threading.Thread(target=lambda: got.append(hub.wait(start, lambda o, k: o == "o_b", 10)))
    t.start()
    svc.handoffs.log("o_a", "shopper", "x")  # not this waiter's conversation
    svc.handoffs.log("o_b", "shopper", "y")
    t.join(15)
    found, position = got[0]
    assert _ids(found) == [("o_b", "shopper")]
    svc.handoffs.log("o_b", "bot", "z")
    again, _ = hub.wait(position, lambda o, k: True, 10)  # resumed: only what came after
    assert _ids(again) == [("o_b", "bot")]
    assert hub.wait(start, lambda o, k: True, 0)[0][0][1] == "o_a"  # from the start: everything, in order


def test_hub_reads_back_from_redis_what_memory_no_longer_holds(svc, r):
    hub = Hub(r, keep=2, block_ms=100).start()
    start = hub.last_id()
    for i in range(6):
        svc.handoffs.log(f"o_{i}", "shopper", "x")
    assert wait_for(lambda: hub.last_id() != start and r.xrevrange(keys.EVENTS, count=1)[0][0] == hub.last_id())
    assert hub._floor != start  # memory no longer holds the first notices
    seen, position = [], start
    for _ in range(10):
        found, position = hub.wait(position, lambda o, k: True, 0)
        seen += [o for _, o, _ in found]
        if len(seen) == 6:
            break
    assert seen == [f"o_{i}" for i in range(6)]  # a resumed stream misses nothing the stream still holds


@pytest.fixture
def agent_session(svc):
    acc = Accounts(svc.redis)
    acc.add("alice", "agent", "correct horse")
    return acc, acc.open_session("alice")


def test_the_webhook_process_refuses_streams_at_once(app, client, agent_session):
    acc, sid = agent_session
    with app.app_context():
        t = live.ticket("alice", sid)
    resp = client.get("/console/events", query_string={"t": t})
    assert resp.status_code == 503  # answered, not held: the page polls instead
    assert resp.get_json()["error"]["code"] == "ERR_UNAVAILABLE"


def test_a_stream_needs_a_ticket_of_an_open_session(svc, agent_session):
    acc, sid = agent_session
    app = create_app(services=svc, role="live")
    client = app.test_client()
    with app.app_context():
        good = live.ticket("alice", sid)
    assert client.get("/console/events").status_code == 401
    assert client.get("/console/events", query_string={"t": good[:-2] + "xx"}).status_code == 401  # forged
    other = create_app(services=svc, role="live")
    other.secret_key = "another installation"
    with other.app_context():
        assert client.get("/console/events", query_string={"t": live.ticket("alice", sid)}).status_code == 401
    acc.close_session(sid)  # logged out
    assert client.get("/console/events", query_string={"t": good}).status_code == 401
    assert client.get("/console/events", query_string={"t": good}).get_json()["error"]["code"] == "ERR_AUTH"


def test_a_stream_delivers_a_notice_then_ends_when_the_agent_logs_out(svc, agent_session, monkeypatch):
    acc, sid = agent_session
    monkeypatch.setattr(live, "HEARTBEAT_SECONDS", 0.2)
    app = create_app(services=svc, role="live")
    with app.app_context():
        good = live.ticket("alice", sid)
    resp = app.test_client().get("/console/events", query_string={"t": good, "c": "o_w"}, buffered=False)
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    chunks = iter(resp.response)
    assert _s(next(chunks)).startswith("retry: 3000")  # the browser reconnects after 3 s if cut
    svc.handoffs.log("o_other", "shopper", "x")
    svc.handoffs.log("o_w", "shopper", "y")
    text = ""
    while "event: change" not in text:
        text += _s(next(chunks))
    data = json.loads(re.search(r"event: change\ndata: (.*)\n", text).group(1))
    assert data == {"changed": ["o_w"]}  # only the conversation this page watches
    assert re.search(r"id: \d+-\d+\n", text)
    acc.close_session(sid)
    rest = ""
    while "event: end" not in rest:
        rest += _s(next(chunks))
    with pytest.raises(StopIteration):
        next(chunks)
    resp.close()


def _s(chunk):
    return chunk.decode() if isinstance(chunk, bytes) else chunk


class SSE:
    """An open event stream over a plain socket, read on its own thread (closing it is immediate)."""

    def __init__(self, url):
        from urllib.parse import urlsplit
        u = urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=10)
        self.sock.sendall(f"GET {u.path}?{u.query} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        self.text = ""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert wait_for(lambda: "\r\n\r\n" in self.text, timeout=10), self.text
        self.status = int(self.text.split(" ", 2)[1])

    def _read(self):
        try:
            while chunk := self.sock.recv(65536):
                self.text += chunk.decode("utf-8", "replace")
        except OSError:
            pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def console_ticket(stack, name="alice", password="correct horse"):
    """Log in through the webhook process as an agent's browser does, and read the page's ticket."""
    import subprocess
    from conftest import BIN
    subprocess.run([str(BIN / "wxkf"), "user", "add", name, "--role", "agent", "--password-stdin"], env=stack.env,
                   input=password + "\n", text=True, check=True, capture_output=True)
    s = requests.Session()
    html = s.get(stack.url + "/console/login", timeout=5).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    page = s.post(stack.url + "/console/login", data={"name": name, "password": password, "csrf_token": token},
                  timeout=5).text
    return json.loads(re.search(r'encodeURIComponent\(("[^"]+")\)', page).group(1))


def test_open_streams_hold_no_webhook_worker(redis_url, sandbox, builder, tmp_path, r):
    """More streams than the webhook has workers stay open on the live process, while pushes are
    acknowledged and each stream hears of the conversation the push started."""
    stack = Stack(redis_url, sandbox, tmp_path, web_workers=2)
    streams = []
    try:
        stack.start_live()
        stack.start_worker()
        stack.wait_healthy()
        ticket = console_ticket(stack)
        streams = [SSE(f"{stack.live_url}/console/events?t={ticket}") for _ in range(6)]
        assert [s.status for s in streams] == [200] * 6
        assert wait_for(lambda: all(": open" in s.text for s in streams), timeout=10)
        # The same requests to the webhook process are answered at once, so they hold nothing.
        for _ in range(6):
            assert requests.get(f"{stack.url}/console/events?t={ticket}", timeout=5).status_code == 503
        sandbox.state.interact("o_live")
        url, body = builder.request(builder.message("o_live", text="你好"), mode="plain")
        assert requests.post(stack.url + url, data=body, timeout=5).status_code == 200  # WeChat's 5 s
        assert wait_for(lambda: all('"o_live"' in s.text for s in streams), timeout=20), streams[0].text
    finally:
        for s in streams:
            s.close()
        stack.stop()


def test_nginx_conf_routes_console_events_to_the_live_process_unbuffered():
    from wxkf.deploy import nginx_conf
    conf = nginx_conf(upstream="127.0.0.1:8000", live_upstream="127.0.0.1:8002")
    block = conf[conf.index("location = /console/events"):]
    block = block[:block.index("}")]
    assert "proxy_pass http://wxkf_live;" in block and "proxy_buffering off;" in block
    assert "server 127.0.0.1:8002;" in conf


def test_streams_never_take_every_thread_of_the_live_process(svc, agent_session):
    import dataclasses
    acc, sid = agent_session
    svc.config = dataclasses.replace(svc.config, live_threads=5)  # a quarter, at least 4, stays free: 1 slot
    app = create_app(services=svc, role="live")
    client = app.test_client()
    with app.app_context():
        good = live.ticket("alice", sid)
    first = client.get("/console/events", query_string={"t": good}, buffered=False)
    assert first.status_code == 200
    second = client.get("/console/events", query_string={"t": good})
    assert second.status_code == 503 and second.get_json()["error"]["code"] == "ERR_UNAVAILABLE"  # the page polls
    first.close()  # the slot comes back when the stream ends
    third = client.get("/console/events", query_string={"t": good}, buffered=False)
    assert third.status_code == 200
    third.close()


def test_a_ticket_does_not_carry_the_console_session_id(app, agent_session):
    acc, sid = agent_session
    with app.app_context():
        t = live.ticket("alice", sid)
        payload = live._serializer().loads(t)  # what anyone reading the URL can decode
    assert payload[0] == "alice" and sid not in json.dumps(payload)
