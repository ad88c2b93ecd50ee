"""`/api/session`: a Mini Program page's login (issue 10, first part). WeChat's jscode2session is the
sandbox's, with single-use codes that expire; tokens are wxkf's own, signed and server-side."""
import base64
import json

import requests

from wxkf import keys
from wxkf.pageapi import TOKEN_SECONDS


def code_for(sandbox, openid):
    return requests.post(sandbox.url + "/sandbox/login", json={"openid": openid}, timeout=5).json()["code"]


def login(client, sandbox, openid="o_page_shopper"):
    resp = client.post("/api/session", json={"code": code_for(sandbox, openid)})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def refresh(client, token):
    return client.post("/api/session/refresh", headers={"Authorization": f"Bearer {token}"})


def test_a_wx_login_code_becomes_a_token_bound_to_the_shopper(client, sandbox, svc):
    from wxkf.pageapi import verify
    got = login(client, sandbox)
    assert set(got) == {"token", "expires_in"} and got["expires_in"] == TOKEN_SECONDS  # no session_key
    assert verify(svc, got["token"])[0] == "o_page_shopper"
    body = json.loads(base64.urlsafe_b64decode(got["token"].split(".")[0] + "=="))
    assert body["o"] == "o_page_shopper" and body["a"] == svc.config.appid


def test_codes_are_single_use_and_bad_ones_get_a_stable_error(client, sandbox):
    code = code_for(sandbox, "o_once")
    assert client.post("/api/session", json={"code": code}).status_code == 200
    again = client.post("/api/session", json={"code": code})
    assert again.status_code == 401 and again.get_json()["error"]["code"] == "ERR_AUTH" and "40163" in again.get_json()["error"]["message"]
    assert client.post("/api/session", json={"code": "made-up"}).get_json()["error"]["code"] == "ERR_AUTH"
    assert client.post("/api/session", json={}).get_json()["error"]["code"] == "ERR_BAD_REQUEST"
    assert client.post("/api/session", data=b"not json").status_code == 400
    code = code_for(sandbox, "o_slow")
    sandbox.state.offset += 301
    assert client.post("/api/session", json={"code": code}).get_json()["error"]["code"] == "ERR_AUTH"  # expired


def test_forged_expired_and_refreshed_away_tokens_are_refused(client, sandbox, svc, r):
    from wxkf.pageapi import verify
    token = login(client, sandbox)["token"]
    body, mac = token.split(".")
    forged_body = base64.urlsafe_b64encode(json.dumps(
        dict(json.loads(base64.urlsafe_b64decode(body + "==")), o="o_someone_else")).encode()).decode().rstrip("=")
    assert verify(svc, f"{forged_body}.{mac}") is None  # another openid under the old signature
    assert verify(svc, f"{body}.{'0' * 64}") is None
    assert refresh(client, f"{forged_body}.{mac}").status_code == 401
    new = refresh(client, token)
    assert new.status_code == 200 and verify(svc, new.get_json()["token"])[0] == "o_page_shopper"
    old = refresh(client, token)  # the refreshed-away token, replayed
    assert old.status_code == 401 and old.get_json()["error"]["code"] == "ERR_AUTH"
    assert verify(svc, token) is None
    for key in r.scan_iter(match=keys.api_session("*")):
        r.delete(key)  # sessions expire with their tokens
    assert verify(svc, new.get_json()["token"]) is None
    assert refresh(client, "garbage").status_code == 401 and refresh(client, "").status_code == 401


def test_logins_are_rate_limited_per_address(client, sandbox, svc, monkeypatch):
    monkeypatch.setattr("wxkf.pageapi.LOGINS_PER_MINUTE", 3)
    codes = [code_for(sandbox, f"o_rate{i}") for i in range(4)]
    statuses = [client.post("/api/session", json={"code": c}).status_code for c in codes]
    assert statuses == [200, 200, 200, 429]


def test_the_session_key_is_never_logged(client, sandbox, caplog):
    import logging
    caplog.set_level(logging.DEBUG)
    login(client, sandbox, "o_logged")
    assert "session_key" not in caplog.text


# -- /api/chat and /api/messages (issue 10, second part) --------------------------------------------
import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from conftest import start_worker, wait_for  # noqa: E402
from wxkf import create_app  # noqa: E402


@pytest.fixture
def live_client(svc):
    """The app in the live role (as `wxkf live` serves it) and a worker answering on a thread."""
    app = create_app(services=svc, role="live")
    w = start_worker(svc, "page-worker")
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            w.run_once(block_ms=50)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield app.test_client()
    stop.set()
    t.join(10)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def chat(client, token, query, **extra):
    return client.post("/api/chat", json=dict(extra, query=query), headers=bearer(token))


def test_chat_answers_from_the_knowledge_base_in_the_shoppers_conversation(live_client, sandbox, svc):
    token = login(live_client, sandbox, "o_page")["token"]
    resp = chat(live_client, token, "能开发票吗")
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["source"] == "knowledge" and "发票" in body["reply"] and body["escalated"] is False
    assert body["suggestions"] == [] and body["id"].startswith("pg_") and resp.headers["ETag"]
    # The same conversation as the contact button's: the console shows it, marked as the page's.
    lines = svc.handoffs.transcript("o_page")
    assert [(t["role"], t["text"]) for t in lines] == [("shopper", "能开发票吗"), ("bot", body["reply"])]
    assert svc.channel_of("o_page") == "page"
    assert sandbox.sends("o_page") == []  # nothing went through WeChat's send API


def test_a_retried_message_is_answered_once(live_client, sandbox, svc):
    token = login(live_client, sandbox, "o_retry")["token"]
    first = chat(live_client, token, "能开发票吗", msgid="client-0001")
    again = chat(live_client, token, "能开发票吗", msgid="client-0001")  # the page retried on a weak network
    assert first.get_json() == again.get_json() and first.headers["ETag"] == again.headers["ETag"]
    assert [t["role"] for t in svc.handoffs.transcript("o_retry")] == ["shopper", "bot"]
    assert len(live_client.get("/api/messages", headers=bearer(token)).get_json()["messages"]) == 1


def test_escalation_hands_the_page_shopper_to_the_console_and_agent_replies_reach_the_page(live_client, sandbox, svc):
    token = login(live_client, sandbox, "o_angry")["token"]
    body = chat(live_client, token, "我要投诉你们，转人工").get_json()
    assert body["escalated"] is True and body["source"] == "escalate"
    assert svc.handoffs.held("o_angry")
    queued, _ = svc.handoffs.queue()
    assert [q["openid"] for q in queued] == ["o_angry"]
    # While a human holds the chat the bot stays silent, and the page is told so.
    quiet = chat(live_client, token, "人呢？").get_json()
    assert quiet == {"id": quiet["id"], "reply": None, "source": "human", "suggestions": [], "escalated": True}
    # An agent answers from the console: the Outbox sends it through the page's mailbox.
    seen = live_client.get("/api/messages", headers=bearer(token)).get_json()
    svc.outbox.submit("o_angry", "您好，我是客服小王。", "alice", "reply-1")
    got = wait_for(lambda: live_client.get("/api/messages", query_string={"after": seen["next"], "wait": 5},
                                           headers=bearer(token)).get_json()["messages"])
    assert [(m["type"], m["text"]) for m in got] == [("agent", "您好，我是客服小王。")]
    assert sandbox.sends("o_angry") == []


def test_a_long_poll_returns_when_the_agent_writes(live_client, sandbox, svc):
    token = login(live_client, sandbox, "o_poll")["token"]
    chat(live_client, token, "能开发票吗")
    svc.handoffs.start("o_poll", "request", 1, via="console")
    seen = live_client.get("/api/messages", headers=bearer(token)).get_json()
    got = []
    t = threading.Thread(target=lambda: got.append(live_client.get(
        "/api/messages", query_string={"after": seen["next"], "wait": 20}, headers=bearer(token)).get_json()))
    t.start()
    assert wait_for(lambda: t.is_alive(), timeout=2)  # waiting, holding a live-process thread only
    svc.outbox.submit("o_poll", "在的，请讲。", "alice", "reply-2")
    t.join(25)
    assert [m["text"] for m in got[0]["messages"]] == ["在的，请讲。"]


def test_chat_refuses_bad_tokens_bad_bodies_and_too_many_messages(live_client, sandbox, svc):
    token = login(live_client, sandbox, "o_spam")["token"]
    assert chat(live_client, "forged.token", "你好").get_json()["error"]["code"] == "ERR_AUTH"
    assert live_client.post("/api/chat", json={"query": "你好"}).status_code == 401
    assert live_client.post("/api/chat", data="not json", headers=bearer(token)).get_json()["error"]["code"] == "ERR_BAD_REQUEST"
    assert chat(live_client, token, "   ").status_code == 400
    assert chat(live_client, token, "好" * 4001).get_json()["error"]["code"] == "ERR_TOO_LONG"
    assert chat(live_client, token, "你好", msgid="x").status_code == 400
    assert svc.handoffs.transcript("o_spam") == []  # nothing refused was queued
    for _ in range(svc.config.api_chat_per_minute):  # this minute's allowance, used up
        svc.redis.incr(keys.api_chat_rate("o_spam", int(time.time() // 60)))
    limited = chat(live_client, token, "你好")
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "ERR_RATE_LIMITED"
    assert 0 < int(limited.headers["Retry-After"]) <= 60


def test_a_late_answer_is_a_timeout_the_page_can_recover_from(svc, sandbox):
    import dataclasses
    svc.config = dataclasses.replace(svc.config, api_wait=0.3)
    app = create_app(services=svc, role="live")  # no worker running: nobody answers in time
    client = app.test_client()
    token = login(client, sandbox, "o_slow")["token"]
    resp = chat(client, token, "能开发票吗")
    assert resp.status_code == 504
    body = resp.get_json()
    assert body["error"]["code"] == "ERR_AI_TIMEOUT" and body["id"].startswith("pg_")
    w = start_worker(svc, "late")
    assert wait_for(lambda: w.run_once(block_ms=50) or svc.page.result(body["id"]))
    got = client.get("/api/messages", headers=bearer(token)).get_json()["messages"]
    assert got[0]["reply_to"] == body["id"] and "发票" in got[0]["reply"]  # the answer came after all


def test_the_webhook_process_does_not_wait_for_answers(client, sandbox):
    token = login(client, sandbox, "o_web")["token"]
    resp = chat(client, token, "能开发票吗")
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "ERR_UNAVAILABLE"
    polled = client.get("/api/messages", headers=bearer(token))
    assert polled.status_code == 200 and polled.get_json() == {"messages": [], "next": "0-0"}  # at once
    waiting = client.get("/api/messages", query_string={"wait": 20}, headers=bearer(token))
    assert waiting.status_code == 503 and waiting.get_json()["error"]["code"] == "ERR_UNAVAILABLE"  # never waits here


def test_an_agent_reply_redelivered_after_a_crash_reaches_the_page_once(svc, sandbox, client):
    token = login(client, sandbox, "o_twice")["token"]
    svc.page.mark_active("o_twice")
    from wxkf.agents.outbox import push_id
    fields = {"openid": "o_twice", "reply_id": "r-1", "text": "稍等，我查一下。"}
    svc.outbox._send(fields)
    svc.outbox._send(fields)  # the worker died before acknowledging: read and sent again
    got = client.get("/api/messages", headers=bearer(token)).get_json()["messages"]
    assert [m["text"] for m in got] == ["稍等，我查一下。"]
    assert not any(t["role"] == "system" for t in svc.handoffs.transcript("o_twice"))  # no "not delivered"
    assert svc.redis.hexists(keys.sent(push_id("r-1")), "part:0")


def test_writing_through_the_contact_button_moves_the_conversation_back_to_wechat(live_client, sandbox, svc, builder):
    token = login(live_client, sandbox, "o_both")["token"]
    chat(live_client, token, "能开发票吗")
    assert svc.channel_of("o_both") == "page" and svc.sender_for("o_both") is svc.page
    sandbox.state.interact("o_both")
    url, body = builder.request(builder.message("o_both", text="还在吗"), mode="plain")
    web = create_app(services=svc).test_client()
    assert web.post(url, data=body).status_code == 200
    assert wait_for(lambda: svc.channel_of("o_both") == "wechat")  # agents now answer through WeChat
    assert svc.sender_for("o_both") is svc.sender


def test_malformed_requests_get_a_clear_400_or_401_never_a_500(live_client, sandbox, svc):
    token = login(live_client, sandbox, "o_odd")["token"]
    assert live_client.get("/api/messages", query_string={"wait": "nan"}, headers=bearer(token)).status_code == 400
    assert live_client.get("/api/messages", query_string={"wait": "-1"}, headers=bearer(token)).status_code == 400
    assert live_client.get("/api/messages", query_string={"after": "1-99999999999999999999"},
                           headers=bearer(token)).status_code == 400  # beyond what Redis accepts
    assert live_client.post("/api/chat", json={"query": "你好"},
                            headers={"Authorization": "Bearer a.\u00e9"}).status_code == 401
    assert live_client.post("/api/session", json=["code"]).status_code == 400
    assert chat(live_client, token, "\ud800").status_code == 400  # a lone surrogate is not text
    assert not svc.page.is_page("o_odd")  # nothing refused moved the conversation to the page


def test_one_shopper_cannot_hold_every_waiting_slot(live_client, sandbox, svc):
    token = login(live_client, sandbox, "o_greedy")["token"]
    started = []

    def poll():
        started.append(1)
        live_client.get("/api/messages", query_string={"wait": 3}, headers=bearer(token))
    threads = [threading.Thread(target=poll) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_for(lambda: svc.redis.get(keys.api_waiting("o_greedy")) == "2")  # two may wait
    third = live_client.get("/api/messages", query_string={"wait": 20}, headers=bearer(token))
    assert third.status_code == 200 and third.get_json()["messages"] == []
    assert any(t.is_alive() for t in threads)  # answered while the first two still wait: not held
    assert chat(live_client, token, "能开发票吗").status_code == 429  # and not queued
    for t in threads:
        t.join(10)
    assert svc.redis.get(keys.api_waiting("o_greedy")) == "0"
