"""WeChat-native handoff: the passive transfer reply, silence while a human holds the chat, and the
three ways the bot gets the shopper back."""
import dataclasses
import json
import time

import pytest
import xmltodict

from wxkf import create_app, keys
from wxkf.services import Services
from wxkf.wechat.crypto import sha1_signature
from conftest import start_worker


@pytest.fixture
def fast(svc):
    svc.config = dataclasses.replace(svc.config, lease_seconds=1, heartbeat_seconds=0.2)
    return svc


@pytest.fixture
def worker(fast):
    return start_worker(fast)


def send(client, builder, sandbox, openid, mode="plain", fmt="xml", **kw):
    fields = builder.message(openid, fmt=fmt, **kw)
    if "event" not in kw:
        sandbox.state.interact(openid)
    url, body = builder.request(fields, mode=mode, fmt=fmt)
    resp = client.post(url, data=body)
    assert resp.status_code == 200
    return resp, url, body


def open_reply(resp, builder, fmt, mode, url):
    """Read the passive reply as WeChat does: verify and decrypt the envelope when encrypted."""
    text = resp.get_data(as_text=True)
    if text == "success":
        return None
    doc = json.loads(text) if fmt == "json" else xmltodict.parse(text)["xml"]
    if mode != "plain":
        assert "success" not in text
        assert doc["MsgSignature"] == sha1_signature(builder.token, str(doc["TimeStamp"]), doc["Nonce"], doc["Encrypt"])
        plain = builder.crypto.decrypt(doc["Encrypt"], doc["MsgSignature"], str(doc["TimeStamp"]), doc["Nonce"])
        doc = json.loads(plain) if fmt == "json" else xmltodict.parse(plain)["xml"]
    return doc


def drain(worker, rounds=4):
    for _ in range(rounds):
        worker.run_once(block_ms=50)


@pytest.mark.parametrize("mode", ["plain", "compat", "safe"])
@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_escalating_push_is_answered_with_transfer_customer_service(client, builder, sandbox, mode, fmt):
    resp, url, _ = send(client, builder, sandbox, "o_angry", mode=mode, fmt=fmt, text="我要投诉你们")
    reply = open_reply(resp, builder, fmt, mode, url)
    assert reply["MsgType"] == "transfer_customer_service"
    assert reply["ToUserName"] == "o_angry" and reply["FromUserName"] == builder.original_id
    assert int(reply["CreateTime"]) > 0
    expected = "application/json" if fmt == "json" else "application/xml"
    assert resp.headers["Content-Type"].startswith(expected)


def test_a_retry_of_the_escalating_push_gets_the_same_answer(client, builder, sandbox):
    _, url, body = send(client, builder, sandbox, "o_retry", text="转人工")
    again = client.post(url, data=body)
    assert xmltodict.parse(again.data)["xml"]["MsgType"] == "transfer_customer_service"


def test_transinfo_names_the_configured_agent(cfg, sandbox, r, builder):
    c = dataclasses.replace(cfg, api_base=sandbox.url, kf_account="kf001@shop")
    client = create_app(services=Services(c, redis=r)).test_client()
    resp, _, _ = send(client, builder, sandbox, "o_vip", text="转人工")
    assert xmltodict.parse(resp.data)["xml"]["TransInfo"]["KfAccount"] == "kf001@shop"


@pytest.mark.parametrize("reading, text, at_once", [
    (True, "转人工", True),
    (True, "我朋友在房间里晕倒了", True),
    (True, "你们前台态度太差了 我要投诉", False),
    (True, "气死我了", False),
    (True, "我急用 今天能发货吗", True),
    (False, "你们前台态度太差了 我要投诉", True),
    (False, "我急用 今天能发货吗", True),
])
def test_the_webhook_hands_over_at_once_only_what_the_reading_may_never_overrule(cfg, r, sandbox, builder, reading,
                                                                                  text, at_once):
    """With the model's reading on (the default), a complaint or anger cue word is queued for the
    worker, whose reading decides (a calm message stays with the bot); a request for a person or
    urgency is handed over in the push's own answer. With the reading off, every rule is."""
    c = dataclasses.replace(cfg, api_base=sandbox.url, model_scoring=reading, model_escalation=reading)
    client = create_app(services=Services(c, redis=r)).test_client()
    resp, _, _ = send(client, builder, sandbox, "o_at_once", text=text)
    if at_once:
        assert xmltodict.parse(resp.data)["xml"]["MsgType"] == "transfer_customer_service"
    else:
        assert resp.data == b"success"
        assert r.exists(keys.handoff("o_at_once")) == 0


def test_plain_questions_and_lookalikes_are_not_transferred(client, builder, sandbox):
    for text in ("发票怎么开", "不急 慢慢来", "我不投诉 就问问"):
        resp, _, _ = send(client, builder, sandbox, "o_calm", text=text)
        assert resp.data == b"success"


def test_shopper_is_told_once_and_the_bot_stays_silent_while_held(fast, client, builder, sandbox, worker):
    send(client, builder, sandbox, "o_h", text="气死我了 东西坏了还不给退")
    drain(worker)
    sent = [m["text"]["content"] for m in sandbox.sends("o_h")]
    kb = fast.knowledge.get()
    assert sent == [kb.escalation_reply]
    for text in ("在吗", "发票怎么开", "人呢"):
        resp, _, _ = send(client, builder, sandbox, "o_h", text=text)
        assert xmltodict.parse(resp.data)["xml"]["MsgType"] == "transfer_customer_service"
    drain(worker)
    assert len(sandbox.sends("o_h")) == 1  # the bot said nothing more
    roles = [e["role"] for e in fast.handoffs.transcript("o_h")]
    assert roles[:3] == ["shopper", "system", "bot"] and roles.count("shopper") == 4


def test_events_are_never_forwarded_to_humans(fast, client, builder, sandbox, worker):
    send(client, builder, sandbox, "o_e", text="转人工")
    resp, _, _ = send(client, builder, sandbox, "o_e", event="user_enter_tempsession")
    assert resp.data == b"success"


def test_bot_resumes_when_wechat_closes_the_session(fast, client, builder, sandbox, worker):
    send(client, builder, sandbox, "o_c", text="转人工")
    drain(worker)
    send(client, builder, sandbox, "o_c", event="kf_close_session", KfAccount="kf001@shop")
    drain(worker)
    assert not fast.handoffs.held("o_c")
    resp, _, _ = send(client, builder, sandbox, "o_c", text="发票怎么开")
    assert resp.data == b"success"
    drain(worker)
    assert "电子发票" in sandbox.sends("o_c")[-1]["text"]["content"]
    assert any("结束了会话" in e["text"] for e in fast.handoffs.transcript("o_c"))


def test_bot_resumes_when_an_agent_hands_back(fast, client, builder, sandbox, worker):
    send(client, builder, sandbox, "o_b", text="转人工")
    drain(worker)
    assert fast.handoffs.end("o_b", "agent handed back", who="alice")
    send(client, builder, sandbox, "o_b", text="发票怎么开")
    drain(worker)
    assert "电子发票" in sandbox.sends("o_b")[-1]["text"]["content"]


def test_bot_resumes_after_30_idle_minutes(fast, client, builder, sandbox, worker, r):
    fast.config = dataclasses.replace(fast.config, handoff_seconds=1)
    send(client, builder, sandbox, "o_t", text="转人工")
    assert 0 < r.ttl(keys.handoff("o_t")) <= 1
    time.sleep(1.2)
    queue, expired = fast.handoffs.queue()
    assert expired == ["o_t"] and queue == []
    assert "30分钟" in fast.handoffs.transcript("o_t")[-1]["text"]
    resp, _, _ = send(client, builder, sandbox, "o_t", text="发票怎么开")
    assert resp.data == b"success"


def test_agent_activity_keeps_the_hold(fast, client, builder, sandbox, r):
    send(client, builder, sandbox, "o_a", text="转人工")
    r.expire(keys.handoff("o_a"), 5)
    fast.handoffs.touch("o_a", agent="alice", claim=True)
    assert r.ttl(keys.handoff("o_a")) > 1000
    assert fast.handoffs.get("o_a")["status"] == "claimed"


def test_repeated_failure_in_the_worker_starts_the_handoff(fast, client, builder, sandbox, worker):
    for text in ("今天天气怎么样", "你们老板是谁", "给我讲个笑话"):
        send(client, builder, sandbox, "o_rf", text=text)
        drain(worker)
    assert fast.handoffs.get("o_rf")["reason"] == "repeated_failure"
    resp, _, _ = send(client, builder, sandbox, "o_rf", text="还在吗")
    assert xmltodict.parse(resp.data)["xml"]["MsgType"] == "transfer_customer_service"


def test_queue_orders_by_priority_then_waiting_time(fast, client, builder, sandbox):
    send(client, builder, sandbox, "o_req", text="转人工")
    time.sleep(0.01)
    send(client, builder, sandbox, "o_urgent", text="孩子吃了过敏了")
    send(client, builder, sandbox, "o_cmp", text="我要投诉")
    queue, _ = fast.handoffs.queue()
    assert [q["openid"] for q in queue] == ["o_urgent", "o_cmp", "o_req"]


def test_each_new_escalation_notifies_the_wecom_group_robot(fast, client, builder, sandbox):
    fast.config = dataclasses.replace(fast.config, robot_webhook=sandbox.url + "/cgi-bin/webhook/send?key=abc")
    w = start_worker(fast, "robot")
    send(client, builder, sandbox, "o_robot", text="孩子吃了过敏了")
    send(client, builder, sandbox, "o_robot", text="快点")  # still the same handoff: no second notice
    drain(w)
    assert len(sandbox.state.robot) == 1
    content = sandbox.state.robot[0]["markdown"]["content"]
    assert "urgent" in content and "o_robot" in content


def test_a_handoff_started_by_the_webhook_or_by_the_worker_is_the_same_handoff(client, builder, sandbox, svc,
                                                                              worker):
    """One definition of a handoff (fields, status, queue score, lifetime, transcript line), whether the
    webhook starts it atomically with the push or the worker starts it after deciding."""
    send(client, builder, sandbox, "o_by_webhook", text="我要投诉你们")
    drain(worker)
    svc.handoffs.start("o_by_worker", "complaint", 3, via="worker")
    by_webhook, by_worker = svc.handoffs.get("o_by_webhook"), svc.handoffs.get("o_by_worker")
    assert by_webhook.pop("via") == "webhook" and by_worker.pop("via") == "worker"
    assert set(by_webhook) == set(by_worker) == {"status", "reason", "priority", "since", "activity"}
    assert [by_webhook[k] for k in ("status", "reason", "priority")] == ["waiting", "complaint", "3"]
    assert [by_worker[k] for k in ("status", "reason", "priority")] == ["waiting", "complaint", "3"]
    assert abs(svc.redis.ttl(keys.handoff("o_by_webhook")) - svc.redis.ttl(keys.handoff("o_by_worker"))) <= 2
    scores = dict(svc.redis.zrange(keys.HANDOFFS, 0, -1, withscores=True))
    assert scores["o_by_webhook"] == pytest.approx(float(by_webhook["since"]) - 300_000)
    assert scores["o_by_worker"] == pytest.approx(float(by_worker["since"]) - 300_000)
    lines = [[t["text"] for t in svc.handoffs.transcript(o) if t["role"] == "system"]
             for o in ("o_by_webhook", "o_by_worker")]
    assert lines == [["转人工：投诉"], ["转人工：投诉"]]
