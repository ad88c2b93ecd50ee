"""The WeCom channel under faults an outsider found: a session ended and a question in one page, data
WeCom could not have sent, an expired callback Token, sessions WeCom ends on its own, one customer on
two accounts, an escalation interrupted halfway, a late first pull, timeouts, business cards, and the
sandbox held to the protocol reference. Each test failed before its fix."""
import dataclasses
import time

import pytest
import redis as redis_lib

from wxkf import keys
from wxkf.errors import api_error
from wxkf.wecom.sandbox import ACCOUNT, SERVICER

from conftest import WorkerDied, die_after_sending, start_worker
from test_wecom import QUESTIONS, callback, replies_for, run_until_quiet
from test_worker import push as mp_push


# 1 ------------------------------------------------------------------------------------------------
def test_customer_who_writes_right_after_the_servicer_ended_is_answered(svc, client, kb_builder, world, r):
    worker = start_worker(svc)
    uid = "wmEndThenAsk"
    world.customer_message(uid, "转人工")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    world.servicer_take(uid)
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert len(replies_for(world, uid)) == 1  # the escalation promise
    # The servicer ends the session and the customer immediately asks something new: WeCom holds
    # both for the next sync_msg (one page).
    world.servicer_end(uid)
    world.customer_message(uid, "有优惠券吗")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert world.sessions[(ACCOUNT, uid)]["state"] in (0, 1)  # WeCom: a new session, the API may send
    assert r.hget(keys.kf_user(uid), f"state:{ACCOUNT}") in ("0", "1")  # and wxkf knows it
    assert not svc.handoffs.held(uid)
    assert len(replies_for(world, uid)) == 2, "the new question was never answered"


# 2 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("poison", [
    {"origin": "\u00b3"},          # "³".isdigit() is True, int("³") raises ValueError
    {"send_time": "\u00b2"},       # same for send_time
])
def test_a_malformed_sync_msg_item_does_not_kill_the_worker(svc, world, r, poison, monkeypatch):
    worker = start_worker(svc)
    item = {"msgid": "poison1", "open_kfid": ACCOUNT, "external_userid": "wmPoison", "origin": 3,
            "send_time": int(time.time()), "msgtype": "text", "text": {"content": "hi"}}
    item.update(poison)
    real = svc.kf.api._http

    def fake(method, path, *a, **kw):
        if path.endswith("sync_msg"):
            return {"errcode": 0, "msg_list": [item], "has_more": 0, "next_cursor": "C1"}
        return real(method, path, *a, **kw)

    monkeypatch.setattr(svc.kf.api, "_http", fake)
    svc.kf.wake(ACCOUNT, "ENCpoison")
    assert worker.step() is not None  # the worker's loop body survives it (None = a Redis failure)
    assert r.get(keys.kf_cursor(ACCOUNT)) == "C1" and r.hlen(keys.KF_WAKE) == 0  # the page was read
    queued = sum(r.xlen(keys.inbox(s)) for s in range(svc.config.inbox_shards))
    if "origin" in poison:
        assert queued == 0  # an origin WeCom does not document: not a customer's message, skipped
    else:
        assert svc.handoffs.transcript("wmPoison")[0]["text"] == "hi"  # a bad send_time: taken as now


@pytest.mark.parametrize("reply", [
    {"errcode": 0, "msg_list": 5, "has_more": 0, "next_cursor": "C1"},
    [{"errcode": 0}],                                                 # JSON array instead of object
])
def test_a_malformed_sync_msg_response_does_not_kill_the_worker(svc, world, r, reply, monkeypatch):
    worker = start_worker(svc)
    real = svc.kf.api._http

    def fake(method, path, *a, **kw):
        return reply if path.endswith("sync_msg") else real(method, path, *a, **kw)

    monkeypatch.setattr(svc.kf.api, "_http", fake)
    svc.kf.wake(ACCOUNT, "ENCbad")
    assert worker.step() is not None  # survived, and not mistaken for a Redis failure
    assert r.hget(keys.KF_RETRY, ACCOUNT) is not None  # retried later, with backoff
    assert r.hlen(keys.KF_WAKE) == 1 and r.get(keys.kf_cursor(ACCOUNT)) is None  # nothing taken as read


def test_a_bad_next_cursor_does_not_starve_the_mini_program_inbox(svc, client, builder, sandbox, world, r,
                                                                   monkeypatch):
    worker = start_worker(svc)
    mp_push(client, builder, sandbox, "o_mp_shopper", text="能开发票吗")  # a Mini Program shopper waits
    real = svc.kf.api._http

    def fake(method, path, *a, **kw):
        if path.endswith("sync_msg"):
            return {"errcode": 0, "msg_list": [], "has_more": 0, "next_cursor": True}
        return real(method, path, *a, **kw)

    monkeypatch.setattr(svc.kf.api, "_http", fake)
    svc.kf.wake(ACCOUNT, "ENCbool")
    outcomes = [worker.step() for _ in range(5)]
    assert sandbox.sends("o_mp_shopper"), f"the Mini Program shopper was never answered; step() -> {outcomes}"
    assert r.hget(keys.KF_RETRY, ACCOUNT) is not None, "no backoff: sync_msg is called again every second"


# 3 ------------------------------------------------------------------------------------------------
def test_a_pull_whose_callback_token_expired_recovers_without_a_new_callback(svc, world, r, monkeypatch):
    """Protocol ref. 5.3: the callback Token is valid 10 minutes and optional. A worker that comes
    back after 10 minutes (deploy, crash, WeCom outage) must still fetch the waiting message."""
    worker = start_worker(svc)
    uid = "wmExpiredToken"
    world.customer_message(uid, "能开发票吗")
    svc.kf.wake(ACCOUNT, "ENCissued15minutesago")  # the callback came while no worker ran
    real = svc.kf.api.call
    seen = []

    def call(path, body=None, **kw):
        if path.endswith("sync_msg"):
            seen.append(body.get("token"))
            if body.get("token") == "ENCissued15minutesago":
                raise api_error(95007, "invalid msg token", path)  # expired: 10 minutes (protocol ref. 5.3)
        return real(path, body, **kw)

    monkeypatch.setattr(svc.kf.api, "call", call)
    t = [time.time()]
    svc.kf.clock = lambda: t[0]
    for _ in range(8):  # 8 rounds, the backoff allowed to pass each time (~8 minutes)
        worker.run_once(block_ms=50)
        worker.run_once(block_ms=50)
        t[0] += 61
    assert replies_for(world, uid), f"never pulled; sync_msg tokens sent: {seen}"


# 4 ------------------------------------------------------------------------------------------------
def test_after_wecom_ends_a_pooled_session_on_its_own_the_bot_answers_again(svc, client, kb_builder, world, r,
                                                                            sandbox):
    """Protocol ref. 5.6: a session lasts until ended or 48 h; then the next customer message opens a
    new one (state 0) in which the API may send. A local '2'/'3' that old is asked again."""
    worker = start_worker(svc)
    uid = "wmForgotten"
    world.customer_message(uid, "转人工")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert world.sessions[(ACCOUNT, uid)]["state"] == 2
    # Nobody took it from the pool; two days later WeCom has closed the session, with no event (the
    # reference documents none for the timeout).
    sandbox.state.offset += 49 * 3600
    svc.kf.clock = lambda: time.time() + 49 * 3600
    world.customer_message(uid, "能开发票吗")  # WeCom: the old session is over, a new one (0)
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert world.sessions[(ACCOUNT, uid)]["state"] in (0, 1)
    assert len(replies_for(world, uid)) == 2, (
        f"bot silent forever: local state {r.hget(keys.kf_user(uid), 'state:' + ACCOUNT)!r}, "
        f"send_msg attempts {[c for c in world.calls if c[0].endswith('send_msg')]}")


# 5 ------------------------------------------------------------------------------------------------
def test_one_customer_on_two_kf_accounts_has_two_sessions(svc, client, kb_builder, world, r):
    second = "wkSecondAccount00000000000000002"
    world.accounts[second] = "售后"
    svc.kf.cfg = dataclasses.replace(svc.config, kf_handoff="servicer", kf_servicer=SERVICER)
    worker = start_worker(svc)
    uid = "wmTwoAccounts"
    world.customer_message(uid, "我要投诉你们", kfid=ACCOUNT)  # escalated to a servicer on account 1
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert world.sessions[(ACCOUNT, uid)]["state"] == 3
    world.customer_message(uid, "能开发票吗", kfid=second)  # a new session on account 2
    callback(client, kb_builder, world, open_kfid=second)
    run_until_quiet(worker)
    assert world.sessions[(second, uid)]["state"] in (0, 1)
    to_second = [m for m in world.sent_to(uid) if m["open_kfid"] == second]
    assert to_second, "the question on account 2 was silenced by account 1's servicer session"


# 6 ------------------------------------------------------------------------------------------------
def test_escalation_interrupted_before_trans_still_moves_the_session(svc, client, kb_builder, world, r,
                                                                     monkeypatch):
    worker = start_worker(svc)
    uid = "wmInterrupted"
    real = svc.kf.transfer
    calls = []

    def flaky(openid, kfid=None):
        calls.append(openid)
        if len(calls) == 1:
            raise redis_lib.ConnectionError("Redis went away")  # e.g. reading the token from Redis
        return real(openid, kfid)

    monkeypatch.setattr(svc.kf, "transfer", flaky)
    world.customer_message(uid, "转人工")
    callback(client, kb_builder, world)
    for _ in range(6):
        worker.step()  # the step after a RedisError re-reads the unacknowledged entry
    assert calls, "transfer never attempted"
    assert world.sessions[(ACCOUNT, uid)]["state"] == 2, (
        f"promised a human, but WeCom's pool never got the session (transfer called {len(calls)}x)")


# 7 ------------------------------------------------------------------------------------------------
def test_first_start_answers_the_message_that_woke_it_even_when_the_first_pull_is_late(svc, client,
                                                                                       kb_builder, world, r):
    worker = start_worker(svc)
    uid = "wmFirstLate"
    world.customer_message(uid, "能开发票吗")
    world.failures.append({"path": "/cgi-bin/kf/sync_msg", "errcode": -1, "count": 7})  # WeCom busy
    callback(client, kb_builder, world)
    t = [time.time()]
    svc.kf.clock = lambda: t[0]
    for _ in range(16):  # backoff 1, 2, 4, ... 60 s: about 2.5 minutes until a pull succeeds
        worker.run_once(block_ms=50)
        worker.run_once(block_ms=50)
        t[0] += 20
    assert r.get(keys.kf_cursor(ACCOUNT))
    assert replies_for(world, uid), "the message that triggered the first callback was skipped as history"


# 8 ------------------------------------------------------------------------------------------------
def test_a_business_card_opens_wecoms_window(svc, client, kb_builder, world, r):
    worker = start_worker(svc)
    uid = "wmCard"
    world.customer_message(uid, msgtype="business_card", body={"userid": "zhangsan"})
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert svc.kf.sender.remaining(uid) > 0 or replies_for(world, uid), \
        f"window never opened; undelivered: {[e[1]['reason'] for e in r.xrange(keys.UNDELIVERED)]}"
    assert any(t["role"] == "shopper" for t in svc.handoffs.transcript(uid)), "not in the transcript"


# 9 ------------------------------------------------------------------------------------------------
def test_a_send_msg_read_timeout_is_resent_under_the_same_msgid(svc, world, r, monkeypatch):
    """Protocol ref. 5.4: msgid is WeCom's idempotency key, so a send whose answer timed out can be
    sent again safely; wxkf records it 'unknown' and never retries."""
    from wxkf.errors import WeChatTimeout
    worker = start_worker(svc)
    uid = "wmTimeout"
    world.customer_message(uid, "能开发票吗")
    real = svc.kf.api.call
    timeouts = []

    def call(path, body=None, **kw):
        if path.endswith("/kf/send_msg") and not timeouts:
            timeouts.append(body["msgid"])
            raise WeChatTimeout("no answer within 5 s")  # the request never reached WeCom
        return real(path, body, **kw)

    monkeypatch.setattr(svc.kf.api, "call", call)
    svc.kf.wake(ACCOUNT, "ENCtimeout")
    for _ in range(4):
        worker.run_once(block_ms=50)
    assert replies_for(world, uid), \
        f"reply lost; undelivered: {[e[1]['reason'] for e in r.xrange(keys.UNDELIVERED)]}"


def test_a_send_msg_cut_by_a_dying_worker_is_sent_again_under_the_same_msgid(svc, world, r):
    """WeCom took the reply, then the worker died before recording it. Unlike WeChat's send API
    (tests/test_sender.py), send_msg takes an idempotency key, so the worker taking the message over
    sends the part again with the same msgid: WeCom keeps one copy, and nothing is reported lost."""
    from wxkf.wecom.kf import KfSender, msgid_for
    uid = "wmCut"
    world.customer_message(uid, "能开发票吗")
    worker = start_worker(svc)
    svc.kf.wake(ACCOUNT, "ENCcut")
    for _ in range(4):  # the customer's message: the route and the window are known, the answer sent
        worker.run_once(block_ms=50)
    before = len(world.sent_to(uid))
    first = KfSender(svc.redis, svc.kf.api, svc.metrics)
    die_after_sending(first)
    with pytest.raises(WorkerDied):
        first.deliver("wk_cut", uid, ["可以开"])
    second = KfSender(svc.redis, svc.kf.api, svc.metrics)  # another process
    assert second.deliver("wk_cut", uid, ["可以开"]) == 1
    assert [m["msgid"] for m in world.sent_to(uid)[before:]] == [msgid_for("wk_cut:part:0")]  # one copy
    assert r.hget(keys.sent("wk_cut"), "part:0") not in (None, "unknown")
    assert [f["reason"] for _, f in r.xrange(keys.UNDELIVERED)] == []


# 10 -----------------------------------------------------------------------------------------------
def test_sandbox_sync_msg_refuses_a_token_it_never_issued(svc, world):
    """Protocol ref. 5.3: the token comes from a callback and is valid 10 minutes."""
    from wxkf.errors import WeChatApiError
    with pytest.raises(WeChatApiError):
        svc.kf.api.call("/cgi-bin/kf/sync_msg", {"open_kfid": ACCOUNT, "token": "ENCneverIssued", "limit": 10})


def test_sandbox_state_get_gives_a_servicer_only_in_state_3(svc, world):
    """Protocol ref. 5.6: `servicer_userid` only when the state is 3."""
    data = svc.kf.api.call("/cgi-bin/kf/service_state/get", {"open_kfid": ACCOUNT, "external_userid": "wmNobody"})
    assert data["service_state"] == 4 and "servicer_userid" not in data


class _Spun(BaseException):
    pass


def test_has_more_without_a_next_cursor_does_not_spin(svc, world, r, monkeypatch):
    """A page with messages, has_more = 1 and no next_cursor: the guard covers only an empty page,
    so the same page is fetched again and again, with no pause, while the lock is renewed."""
    calls = []
    item = {"msgid": "spin1", "open_kfid": ACCOUNT, "external_userid": "wmSpin", "origin": 3,
            "send_time": int(time.time()), "msgtype": "text", "text": {"content": "hi"}}
    real = svc.kf.api._http

    def fake(method, path, *a, **kw):
        if path.endswith("sync_msg"):
            calls.append(1)
            if len(calls) > 50:
                raise _Spun()
            return {"errcode": 0, "msg_list": [item], "has_more": 1}
        return real(method, path, *a, **kw)

    monkeypatch.setattr(svc.kf.api, "_http", fake)
    r.set(keys.kf_cursor(ACCOUNT), "Cknown")
    svc.kf.wake(ACCOUNT, "ENCspin")
    try:
        svc.kf.pull(ACCOUNT, "w")
    except _Spun:
        pass
    assert len(calls) <= 2, f"sync_msg called {len(calls)} times for one page"


def test_sandbox_send_msg_refuses_a_msgid_outside_ascii(svc, world):
    """Protocol ref. 5.4: msgid is ≤32 bytes of [0-9a-zA-Z_-]."""
    from wxkf.errors import WeChatApiError
    with pytest.raises(WeChatApiError) as err:
        svc.kf.api.call("/cgi-bin/kf/send_msg", {"touser": "wmX", "open_kfid": ACCOUNT, "msgid": "中文",
                                                 "msgtype": "text", "text": {"content": "x"}})
    assert err.value.errcode == 40058


# Found by a second review, after the first one's fixes ---------------------------------------
def test_first_start_interrupted_after_one_page_still_does_not_answer_history(svc, client, kb_builder, world, r,
                                                                              monkeypatch):
    """Module doc: on first start messages older than HISTORY_GRACE are not answered. The horizon
    exists only while there is no cursor; the first page saves one, so a first pull that fails (or
    whose worker dies) after page 1 answers the rest of 3 days of history on the retry."""
    day_old = time.time() - 86400
    for q in QUESTIONS[:4]:
        world.customer_message("wmOldHistory", q, at=day_old)  # a day before wxkf was installed
    svc.kf.page_limit = 1  # stands for an account with > 1000 messages in its last 3 days
    worker = start_worker(svc)
    real = svc.kf.api.call
    syncs = []

    def call(path, body=None, **kw):
        if path.endswith("sync_msg"):
            syncs.append(1)
            if len(syncs) == 2:
                raise api_error(-1, "system busy", path)  # page 2 of the first pull: WeCom busy
        return real(path, body, **kw)

    monkeypatch.setattr(svc.kf.api, "call", call)
    callback(client, kb_builder, world)
    t = [time.time()]
    svc.kf.clock = lambda: t[0]
    for _ in range(6):
        worker.run_once(block_ms=50)
        t[0] += 5  # past the 1 s backoff
    run_until_quiet(worker)
    assert r.hlen(keys.KF_WAKE) == 0
    assert replies_for(world, "wmOldHistory") == [], \
        f"day-old history answered after an interrupted first pull: {replies_for(world, 'wmOldHistory')}"


def test_after_a_failed_transfer_the_bot_does_not_talk_over_the_console_agent(svc, client, kb_builder, world, r):
    """kf_handoff = servicer, the servicer is off duty: service_state/trans answers 95014, the
    transcript tells agents to take the conversation in the console, the handoff is held. The
    customer's next question is then answered by the bot anyway (WeCom's state is still 1)."""
    svc.kf.cfg = dataclasses.replace(svc.config, kf_handoff="servicer", kf_servicer=SERVICER)
    world.servicers[SERVICER] = 1  # 停止接待
    worker = start_worker(svc)
    uid = "wmTransFailed"
    world.customer_message(uid, "我要投诉你们")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert ("/cgi-bin/kf/service_state/trans", 95014) in world.calls
    assert svc.handoffs.held(uid)
    assert any("请在控制台接待" in t["text"] for t in svc.handoffs.transcript(uid))
    promised = replies_for(world, uid)
    world.customer_message(uid, "能开发票吗")  # while an agent opens the conversation in the console
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert replies_for(world, uid) == promised, \
        f"the bot answered a conversation held for a console agent: {replies_for(world, uid)[len(promised):]}"


def test_escalation_whose_promise_send_fails_still_moves_the_session(svc, client, kb_builder, world, r):
    """The escalation reply's kf/send_msg fails (WeCom busy, -1, all attempts). The session must still
    reach WeCom's pool: before the fix the error skipped service_state/trans, and the customer who
    asked for a human was seen by no WeCom servicer."""
    worker = start_worker(svc)
    uid = "wmPromiseFailed"
    world.failures.append({"path": "/cgi-bin/kf/send_msg", "errcode": -1, "count": 3})  # SEND_ATTEMPTS
    world.customer_message(uid, "转人工")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert svc.handoffs.held(uid)
    assert world.sessions[(ACCOUNT, uid)]["state"] == 2, (
        f"escalated, but service_state/trans never called: calls {[c for c in world.calls if 'kf/' in c[0]]}")
