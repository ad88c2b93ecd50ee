"""End to end: gunicorn (as run.sh starts it) + wxkf workers + the WeChat API sandbox, real Redis,
pushes signed and encrypted exactly as WeChat does."""
import os
import signal
import threading
import time

import pytest
import requests

from conftest import wait_for
from wxkf import keys

pytestmark = pytest.mark.slow


def post(stack, builder, sandbox, openid, text, mode="safe", fmt="xml", times=1, concurrent=False):
    sandbox.state.interact(openid)
    fields = builder.message(openid, text=text, fmt=fmt)
    url, body = builder.request(fields, mode=mode, fmt=fmt)
    statuses = []

    def once():
        statuses.append(requests.post(stack.url + url, data=body, timeout=5).status_code)

    if concurrent:
        threads = [threading.Thread(target=once) for _ in range(times)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for _ in range(times):
            once()
    assert statuses == [200] * times
    return fields


@pytest.mark.parametrize("mode, fmt", [("safe", "xml"), ("safe", "json"), ("compat", "xml"), ("plain", "xml"),
                                       ("plain", "json")])
def test_push_becomes_exactly_one_reply(stack, builder, sandbox, mode, fmt):
    stack.start_worker()
    stack.wait_healthy()
    openid = f"o_e2e_{mode}_{fmt}"
    post(stack, builder, sandbox, openid, "发票怎么开", mode=mode, fmt=fmt)
    sent = wait_for(lambda: sandbox.sends(openid))
    assert len(sent) == 1
    assert sent[0]["touser"] == openid and "电子发票" in sent[0]["text"]["content"]


def test_wechat_retries_arriving_concurrently_at_different_gunicorn_workers(stack, builder, sandbox, r):
    stack.start_worker()
    stack.wait_healthy()
    for i in range(5):
        post(stack, builder, sandbox, f"o_retry_{i}", "我的快递到哪了", times=3, concurrent=True)
    wait_for(lambda: all(sandbox.sends(f"o_retry_{i}") for i in range(5)))
    time.sleep(1.0)  # any duplicate would have arrived by now
    assert [len(sandbox.sends(f"o_retry_{i}")) for i in range(5)] == [1] * 5
    assert r.hget(keys.METRICS, "wxkf_duplicates_total") == "10"
    pids = {line.split()[4] for line in (stack.tmp / "serve.log").read_text().splitlines() if " push id=" in line}
    assert len(pids) == 2, "both gunicorn workers should have taken pushes"


def test_sigkilled_worker_holding_a_message_is_replaced_and_the_reply_sent_once(stack, builder, sandbox, r):
    sandbox.state.delays["/cgi-bin/message/custom/typing"] = 4.0  # keeps the worker inside the message
    victim = stack.start_worker("victim")
    stack.wait_healthy()
    post(stack, builder, sandbox, "o_killed", "发票怎么开")
    assert wait_for(lambda: sum(r.xpending(keys.inbox(s), keys.INBOX_GROUP)["pending"]
                                for s in range(16)) == 1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    sandbox.state.delays.clear()
    time.sleep(4.5)  # the sandbox finishes the interrupted typing call; no reply was sent
    assert sandbox.sends("o_killed") == []
    stack.start_worker("heir")
    sent = wait_for(lambda: sandbox.sends("o_killed"), timeout=30)
    time.sleep(1.0)
    assert len(sandbox.sends("o_killed")) == 1 and "电子发票" in sent[0]["text"]["content"]


def test_token_revoked_and_expired_mid_run_one_refresh_shared_by_all_workers(stack, builder, sandbox, r):
    stack.start_worker("w1")
    stack.start_worker("w2")
    stack.wait_healthy()
    shoppers = [f"o_tok_{i}" for i in range(8)]
    for o in shoppers:
        post(stack, builder, sandbox, o, "你好")
    assert wait_for(lambda: all(sandbox.sends(o) for o in shoppers))
    assert len(sandbox.state.token_fetches) == 1

    sandbox.state.revoke_all()  # 40001 for everyone
    for o in shoppers:
        post(stack, builder, sandbox, o, "谢谢")
    assert wait_for(lambda: all(len(sandbox.sends(o)) == 2 for o in shoppers))
    assert len(sandbox.state.token_fetches) == 2
    assert any(code == 40001 for _, code in sandbox.state.calls)

    sandbox.state.offset += 7200  # WeChat's clock passes the token's expiry: 42001
    for o in shoppers:
        post(stack, builder, sandbox, o, "发票怎么开")
    assert wait_for(lambda: all(len(sandbox.sends(o)) == 3 for o in shoppers))
    assert len(sandbox.state.token_fetches) == 3
    assert any(code == 42001 for _, code in sandbox.state.calls)
    logs = "".join((stack.tmp / f"{w}.log").read_text() for w in ("w1", "w2"))
    assert logs.count("access token refreshed") == 3


def test_health_and_metrics_over_http(stack, builder, sandbox):
    stack.start_worker()
    stack.wait_healthy()
    post(stack, builder, sandbox, "o_ops", "你好")
    wait_for(lambda: sandbox.sends("o_ops"))
    health = requests.get(stack.url + "/healthz", timeout=2).json()
    assert health["ok"] and len(health["workers"]) == 1
    text = wait_for(lambda: (t := requests.get(stack.url + "/metrics", timeout=2).text)
                    and 'wxkf_jobs_total{outcome="knowledge"} 1' in t and t)
    assert 'wxkf_sends_total{api="send",errcode="0"} 1' in text


def test_demo_loop_through_the_sandbox_push_endpoint(stack, builder, sandbox):
    """What a newcomer does in demo mode: play a shopper at the sandbox, read the reply there."""
    stack.start_worker()
    stack.wait_healthy()
    sandbox.state.builder, sandbox.state.webhook_url = builder, stack.url
    try:
        for fmt in ("xml", "json"):
            resp = requests.post(sandbox.url + "/sandbox/push", timeout=10,
                                 json={"openid": f"o_demo_{fmt}", "text": "我的快递到哪了", "format": fmt})
            assert resp.json() == {"status": 200, "body": "success"}
        for fmt in ("xml", "json"):
            got = wait_for(lambda: requests.get(sandbox.url + "/sandbox/messages",
                                                params={"touser": f"o_demo_{fmt}"}, timeout=2).json()["messages"])
            assert len(got) == 1 and "发货" in got[0]["text"]["content"]
    finally:
        sandbox.state.builder = sandbox.state.webhook_url = None


def test_worker_loads_the_model_once_and_replies_with_guarded_text(stack, builder, sandbox):
    stack.env["WXKF_GENERATION"] = "true"
    stack.start_worker("genworker")
    stack.wait_healthy(timeout=60)
    for i, text in enumerate(("点进去就白屏", "屏幕有划痕", "发票怎么开")):
        post(stack, builder, sandbox, f"o_gen_{i}", text)
    assert wait_for(lambda: all(sandbox.sends(f"o_gen_{i}") for i in range(3)), timeout=60)
    log = (stack.tmp / "genworker.log").read_text()
    assert log.count("model loaded") == 1
    from wxkf.dialogue.generator import guard
    from wxkf.dialogue.knowledge import load
    kb = load(stack.env["WXKF_KNOWLEDGE"])
    for i, (text, intent) in enumerate((("点进去就白屏", "page_error"), ("屏幕有划痕", "quality"),
                                        ("发票怎么开", "invoice"))):
        reply = sandbox.sends(f"o_gen_{i}")[0]["text"]["content"]
        answer = kb.intent(intent).answer
        assert reply == answer or guard(reply, text, answer) == "ok"


def test_redis_going_away_loses_nothing(sandbox, builder, tmp_path):
    """Redis restarts under a running stack: the webhook answers 503 (WeChat retries), the worker waits,
    and after the restart the retried push is answered exactly once."""
    from conftest import Stack
    from wxkf.store import start_embedded
    data = tmp_path / "redis"
    redis_proc = start_embedded(data)  # AOF on, as run.sh runs it
    stack = Stack(f"unix://{data / 'redis.sock'}", sandbox, tmp_path)
    try:
        stack.start_worker()
        stack.wait_healthy()
        post(stack, builder, sandbox, "o_before", "发票怎么开")
        assert wait_for(lambda: sandbox.sends("o_before"))

        redis_proc.terminate()
        redis_proc.wait(10)
        sandbox.state.interact("o_during")
        fields = builder.message("o_during", text="我的快递到哪了")
        url, body = builder.request(fields)
        assert requests.post(stack.url + url, data=body, timeout=5).status_code == 503
        assert requests.get(stack.url + "/healthz", timeout=5).status_code == 503

        redis_proc = start_embedded(data)
        url, body = builder.request(fields)  # WeChat's retry of the same message
        assert wait_for(lambda: requests.post(stack.url + url, data=body, timeout=5).status_code == 200, timeout=15)
        assert wait_for(lambda: sandbox.sends("o_during"), timeout=30)
        time.sleep(1.0)
        assert len(sandbox.sends("o_during")) == 1 and len(sandbox.sends("o_before")) == 1
        from wxkf.agents.handoff import Handoffs
        from wxkf.store import connect
        transcript = Handoffs(connect(f"unix://{data / 'redis.sock'}")).transcript("o_before")
        assert [line["role"] for line in transcript] == ["shopper", "bot"]
        assert wait_for(lambda: requests.get(stack.url + "/healthz", timeout=5).status_code == 200, timeout=15)
    finally:
        stack.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


def test_demo_wecom_customer_through_gunicorn_and_a_worker_process(stack, sandbox):
    """The demo as a WeCom 微信客服 customer: the sandbox fires the encrypted callback at gunicorn, the
    worker process pulls with sync_msg and answers through kf/send_msg, once per message."""
    stack.start_worker()
    stack.wait_healthy()
    sandbox.state.webhook_url = stack.url
    try:
        for text in ("我的快递到哪了", "能开发票吗"):
            resp = requests.post(sandbox.url + "/sandbox/wecom/customer", timeout=10,
                                 json={"external_userid": "wmDemoCustomer", "text": text})
            assert resp.json() == {"ok": True, "callback_status": 200}
        def replies():
            got = requests.get(sandbox.url + "/sandbox/wecom/messages", params={"touser": "wmDemoCustomer"},
                               timeout=2).json()["messages"]
            return got if len(got) >= 2 else None

        got = wait_for(replies)
        assert got, "no replies through kf/send_msg"
        assert "发货" in got[0]["text"]["content"] and "发票" in got[1]["text"]["content"]
        time.sleep(1)  # nothing more arrives: each message answered once
        assert len(sandbox.state.kf.sent_to("wmDemoCustomer")) == 2
    finally:
        sandbox.state.webhook_url = None


def test_gunicorn_hands_the_push_handler_chunked_and_oversize_bodies_as_flask_would(stack, builder, sandbox, r):
    """Pushes are answered in front of Flask, on gunicorn's own WSGI input: a body sent in chunks (no
    Content-Length) is read whole and queued; one over max_body_bytes is refused 413 whether its
    length is announced or not; a method the URL does not take still gets Flask's 405."""
    fields = builder.message("o_chunked", text="我的快递到哪了")
    url, body = builder.request(fields, mode="safe")

    def chunks(data, size=100):
        yield from (data[i:i + size] for i in range(0, len(data), size))

    resp = requests.post(stack.url + url, data=chunks(body), timeout=5)
    assert resp.status_code == 200 and resp.text == "success"
    assert wait_for(lambda: sum(r.xlen(keys.inbox(s)) for s in range(16)) == 1)
    big = b"<xml>" + b"x" * 300_000 + b"</xml>"
    url2, _ = builder.request(builder.message("o_big", text="hi"), mode="safe")
    assert requests.post(stack.url + url2, data=chunks(big, 65536), timeout=5).status_code == 413
    assert requests.post(stack.url + url2, data=big, timeout=5).status_code == 413
    assert requests.put(stack.url + url, data=body, timeout=5).status_code == 405
    assert sum(r.xlen(keys.inbox(s)) for s in range(16)) == 1
