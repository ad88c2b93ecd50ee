"""Sending through the WeChat API sandbox: window and quota rules, splitting, tokens, retries, idempotency."""
import json
import threading
import time

import pytest

from wxkf import keys
from wxkf.errors import WeChatError, WeChatUnreachable
from wxkf.wechat.api import WeChatAPI
from wxkf.wechat.sender import Sender, pack, split_text

from conftest import WorkerDied, die_after_sending

OPENID = "o_sender_test"


def make_sender(svc, sandbox, base=None, clock=time.time):
    api = WeChatAPI(svc.redis, base or sandbox.url, svc.config.appid, svc.config.secret, metrics=svc.metrics)
    return Sender(svc.redis, api, svc.metrics, clock=clock)


def shopper_writes(sender, sandbox, openid=OPENID):
    now = time.time()
    sandbox.state.interact(openid, at=sandbox.state.now())
    sender.open_window(openid, "message", now)


def undelivered(r):
    return [dict(f, texts=json.loads(f["texts"])) for _, f in r.xrange(keys.UNDELIVERED)]


# -- splitting and packing ------------------------------------------------------------------------
def test_split_never_breaks_a_character_and_respects_the_byte_limit():
    text = ("物流" * 500 + "😀" * 300 + "abc" * 400)
    parts = split_text(text, 2048)
    assert "".join(parts) == text
    assert all(len(p.encode("utf-8")) <= 2048 for p in parts)
    assert len(parts) == len(text.encode()) // 2048 + 1


def test_split_prefers_sentence_ends():
    text = "。".join(["这是一句比较长的话" * 20] * 10) + "。"
    parts = split_text(text, 2048)
    assert all(p.endswith("。") for p in parts)


def test_pack_joins_short_replies_instead_of_spending_quota():
    parts, truncated = pack(["第一条", "第二条", "第三条"], slots=5)
    assert parts == ["第一条\n\n第二条\n\n第三条"] and not truncated


def test_pack_truncates_only_when_the_quota_cannot_hold_it():
    long = "很长的回复。" * 1000  # ~18 KB: 9 messages
    parts, truncated = pack([long], slots=2)
    assert len(parts) == 2 and truncated
    assert parts[-1].endswith("已截断）")
    assert all(len(p.encode()) <= 2048 for p in parts)


# -- the window -----------------------------------------------------------------------------------
def test_reply_reaches_the_shopper(svc, sandbox):
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    assert sender.deliver("m1", OPENID, ["您好"]) == 1
    sent = sandbox.sends(OPENID)
    assert [(m["msgtype"], m["text"]["content"]) for m in sent] == [("text", "您好")]


def test_never_spends_more_than_five_messages_per_shopper_message(svc, sandbox, r):
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    for i in range(7):
        sender.deliver(f"m{i}", OPENID, [f"回复{i}"])
    assert len(sandbox.sends(OPENID)) == 5
    assert not any(code == 45047 for _, code in sandbox.state.calls)
    lost = undelivered(r)
    assert [u["reason"] for u in lost] == ["window_closed_or_quota_used"] * 2
    assert lost[0]["texts"] == ["回复5"]


def test_a_new_shopper_message_resets_the_allowance_without_accumulating(svc, sandbox):
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    for i in range(3):
        sender.deliver(f"a{i}", OPENID, ["x"])
    assert sender.remaining(OPENID) == 2
    shopper_writes(sender, sandbox)
    assert sender.remaining(OPENID) == 5


def test_a_redelivered_message_does_not_grant_its_allowance_again(svc, sandbox):
    """At-least-once delivery brings a push back after a crash; WeChat granted its 5 messages once."""
    sender = make_sender(svc, sandbox)
    sandbox.state.interact(OPENID, at=sandbox.state.now())
    at = time.time()
    assert sender.open_window(OPENID, "message", at, "push-1") == 5
    for i in range(3):
        sender.deliver(f"b{i}", OPENID, ["x"])
    assert sender.open_window(OPENID, "message", at, "push-1") == 2  # the same push, delivered again
    assert sender.remaining(OPENID) == 2
    assert sender.open_window(OPENID, "message", at, "push-2") == 5  # a new message does grant
    assert sender.remaining(OPENID) == 5


def test_window_closes_after_48_hours(svc, sandbox, r):
    offset = [0.0]
    sender = make_sender(svc, sandbox, clock=lambda: time.time() + offset[0])
    shopper_writes(sender, sandbox)
    offset[0] = 48 * 3600 + 1
    sandbox.state.offset = offset[0]
    assert sender.deliver("late", OPENID, ["晚了"]) == 0
    assert sandbox.sends(OPENID) == []
    assert undelivered(r)[0]["reason"] == "window_closed_or_quota_used"


def test_wechat_refusal_45047_is_recorded_and_synced(svc, sandbox, r):
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    sandbox.state.failures.append({"path": "/cgi-bin/message/custom/send", "errcode": 45047, "count": 1})
    assert sender.deliver("q1", OPENID, ["x"]) == 0
    assert sender.remaining(OPENID) == 0
    assert undelivered(r)[0]["reason"] == "errcode_45047"
    assert r.hget(keys.METRICS, 'wxkf_sends_total{api="send",errcode="45047"}') == "1"


def test_shopper_never_wrote_gives_45015_from_wechat(svc, sandbox, r):
    sender = make_sender(svc, sandbox)
    sender.open_window("o_stranger", "message", time.time())  # we think the window is open; WeChat disagrees
    assert sender.deliver("s1", "o_stranger", ["x"]) == 0
    assert undelivered(r)[0]["reason"] == "errcode_45015"
    assert sender.remaining("o_stranger") == 0


def test_enter_session_event_allows_one_message_in_a_minute(svc, sandbox):
    sender = make_sender(svc, sandbox)
    sandbox.state.interact(OPENID, "user_enter_tempsession")
    sender.open_window(OPENID, "user_enter_tempsession", time.time())
    assert sender.deliver("e1", OPENID, ["欢迎", "第二条"]) == 1  # packed into the one allowed message
    assert sender.remaining(OPENID) == 0


# -- idempotency and retries ---------------------------------------------------------------------
def test_the_same_inbound_message_is_answered_once(svc, sandbox):
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    assert sender.deliver("same", OPENID, ["一次"]) == 1
    assert sender.deliver("same", OPENID, ["一次"]) == 0
    assert len(sandbox.sends(OPENID)) == 1


def test_system_busy_is_retried(svc, sandbox, r):
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    sandbox.state.failures.append({"path": "/cgi-bin/message/custom/send", "errcode": -1, "count": 1})
    assert sender.deliver("busy", OPENID, ["重试"]) == 1
    assert len(sandbox.sends(OPENID)) == 1
    assert r.hget(keys.METRICS, 'wxkf_sends_total{api="send",errcode="-1"}') == "1"


def test_a_send_slower_than_the_timeout_is_not_sent_again(svc, sandbox, r):
    """WeChat answering after our timeout may still have delivered: resending gave the shopper the
    same reply three times (issue 8 #3). Sent once, recorded as unknown, never repeated."""
    api = WeChatAPI(svc.redis, sandbox.url, svc.config.appid, svc.config.secret, metrics=svc.metrics, timeout=0.5)
    sender = Sender(svc.redis, api, svc.metrics)
    shopper_writes(sender, sandbox)
    api.token()  # fetched before WeChat slows down
    sandbox.state.delays["/cgi-bin/message/custom/send"] = 1.2
    assert sender.deliver("slow", OPENID, ["您好"]) == 0
    assert sender.deliver("slow", OPENID, ["您好"]) == 0  # delivered again after a crash: still not resent
    time.sleep(1.5)  # the sandbox finishes the slow calls it received
    assert len(sandbox.sends(OPENID)) == 1  # one try, not three
    assert [u["reason"] for u in undelivered(r)] == ["timeout_unknown"]
    assert sender.remaining(OPENID) == 4  # it may have arrived: the allowance stays spent


def test_redis_lost_right_after_wechat_accepted_a_send_does_not_send_it_twice(svc, sandbox, tmp_path):
    """WeChat took the reply, then Redis went away before the send was recorded: the message is not
    acknowledged and comes back after Redis returns. The worker remembers what it sent and writes it
    down first; the shopper gets the reply once (seen in CI: the answer went out twice)."""
    import redis as redis_lib
    from wxkf.store import connect, start_embedded
    data = tmp_path / "redis"
    proc = start_embedded(data)
    client = connect(f"unix://{data / 'redis.sock'}")
    try:
        api = WeChatAPI(client, sandbox.url, svc.config.appid, svc.config.secret, metrics=svc.metrics)
        sender = Sender(client, api, svc.metrics)
        shopper_writes(sender, sandbox)
        wechat_send = sender.send

        def send_then_redis_dies(message):
            wechat_send(message)
            proc.terminate()
            proc.wait(10)
        sender.send = send_then_redis_dies
        with pytest.raises(redis_lib.RedisError):
            sender.deliver("lost-record", OPENID, ["只发一次"])
        assert len(sandbox.sends(OPENID)) == 1
        sender.send = wechat_send

        proc = start_embedded(data)  # back, with what the AOF held
        assert sender.deliver("lost-record", OPENID, ["只发一次"]) == 0  # the redelivered message
        assert len(sandbox.sends(OPENID)) == 1
        assert client.hexists(keys.sent("lost-record"), "part:0")  # written down once Redis was back
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_a_send_cut_by_a_dying_worker_is_not_sent_again_by_the_next(svc, sandbox, r):
    """WeChat took the reply, then the worker died (or lost its shard in a Redis failover) before
    recording it. Another worker, taking the push over, finds the part marked as being sent: the
    outcome is unknown, WeChat's send API has no idempotency key, so it is not sent again but recorded
    for agents to check, as a timeout is (seen once in the Sentinel failover test: a reply sent twice)."""
    first = make_sender(svc, sandbox)
    shopper_writes(first, sandbox)
    die_after_sending(first)
    with pytest.raises(WorkerDied):
        first.deliver("cut", OPENID, ["只发一次"])
    assert len(sandbox.sends(OPENID)) == 1

    second = make_sender(svc, sandbox)  # another process: none of the first one's memory
    assert second.deliver("cut", OPENID, ["只发一次"]) == 0
    assert len(sandbox.sends(OPENID)) == 1
    assert r.hget(keys.sent("cut"), "part:0") == "unknown"
    assert [(u["reason"], u["texts"]) for u in undelivered(r)] == [("interrupted_unknown", ["只发一次"])]
    assert second.deliver("cut", OPENID, ["只发一次"]) == 0  # and not reported twice either
    assert len(undelivered(r)) == 1


def test_a_mark_no_replica_confirmed_does_not_lose_the_reply(svc, sandbox, r):
    """`redis_replicas = 1` while the replica lags (here: there is none): the mark before the send is
    not confirmed, so nothing is sent and the message stays unacknowledged. When it comes back and the
    replica confirms, this process, which knows it never sent the part, sends it: the unconfirmed mark
    must not read as a send cut by a crash."""
    from wxkf.store import NotReplicated
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    sender.replicas = 1
    with pytest.raises(NotReplicated):
        sender.deliver("lagging", OPENID, ["等副本确认"])
    assert sandbox.sends(OPENID) == []
    sender.replicas = 0  # the replica caught up (the embedded server has none to wait for)
    assert sender.deliver("lagging", OPENID, ["等副本确认"]) == 1
    assert [m["text"]["content"] for m in sandbox.sends(OPENID)] == ["等副本确认"]
    assert undelivered(r) == []
    assert sender.remaining(OPENID) == 4  # one message sent, one taken from the allowance


def test_a_part_wechat_refused_is_sent_when_the_push_comes_back(svc, sandbox, r):
    """A refusal is certain (nothing reached the shopper): the part is not left marked as being sent,
    so the redelivered push sends it."""
    sender = make_sender(svc, sandbox)
    sender.attempts = 1
    shopper_writes(sender, sandbox)
    sandbox.state.failures.append({"path": "/cgi-bin/message/custom/send", "errcode": -1, "count": 1})
    with pytest.raises(WeChatError):
        sender.deliver("refused", OPENID, ["再发一次"])
    assert sandbox.sends(OPENID) == []
    assert sender.deliver("refused", OPENID, ["再发一次"]) == 1
    assert [m["text"]["content"] for m in sandbox.sends(OPENID)] == ["再发一次"]


def test_unreachable_wechat_is_recorded_and_quota_refunded(svc, sandbox, r):
    sender = make_sender(svc, sandbox, base="http://127.0.0.1:9")
    sender.attempts = 2
    sender.open_window(OPENID, "message", time.time())
    with pytest.raises(WeChatUnreachable):
        sender.deliver("net", OPENID, ["断网"])
    assert undelivered(r)[0]["reason"] == "errcode_network"
    assert sender.remaining(OPENID) == 5


# -- access tokens --------------------------------------------------------------------------------
def test_one_token_fetch_shared_by_concurrent_callers(svc, sandbox):
    apis = [WeChatAPI(svc.redis, sandbox.url, svc.config.appid, svc.config.secret) for _ in range(8)]
    got = []
    threads = [threading.Thread(target=lambda a=a: got.append(a.token())) for a in apis]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1
    assert sandbox.state.token_fetches == [("stable_token", False)]


def test_revoked_token_40001_refreshes_once_and_the_reply_goes_out(svc, sandbox, r):
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    sender.deliver("t1", OPENID, ["一"])
    sandbox.state.revoke_all()
    sender.deliver("t2", OPENID, ["二"])
    assert [m["text"]["content"] for m in sandbox.sends(OPENID)] == ["一", "二"]
    assert len(sandbox.state.token_fetches) == 2
    assert (("/cgi-bin/message/custom/send", 40001)) in sandbox.state.calls


def test_expired_token_42001_refreshes_once(svc, sandbox):
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    sender.deliver("x1", OPENID, ["一"])
    sandbox.state.offset += 7200  # WeChat's clock moves past the token's life; our cached copy is stale
    sandbox.state.interact(OPENID)
    sender.deliver("x2", OPENID, ["二"])
    assert ("/cgi-bin/message/custom/send", 42001) in sandbox.state.calls
    assert len(sandbox.sends(OPENID)) == 2
    assert len(sandbox.state.token_fetches) == 2


def test_wrong_secret_is_a_clear_error(svc, sandbox):
    from wxkf.errors import WeChatApiError
    api = WeChatAPI(svc.redis, sandbox.url, svc.config.appid, "wrong")
    with pytest.raises(WeChatApiError) as info:
        api.token()
    assert info.value.errcode == 40125


# -- typing ---------------------------------------------------------------------------------------
def test_typing_shown_once_and_refusals_do_not_raise(svc, sandbox):
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    assert sender.typing(OPENID) is True
    assert sender.typing(OPENID) is False  # 45081 already typing
    assert ("/cgi-bin/message/custom/typing", 45081) in sandbox.state.calls
    assert sender.typing("o_nobody") is False  # 45080 no interaction in 30 s

def test_upload_of_a_non_image_type_is_refused_with_wechats_errcode(svc, sandbox):
    from wxkf.errors import WeChatApiError
    sender = make_sender(svc, sandbox)
    with pytest.raises(WeChatApiError) as info:
        sender.api.call("/cgi-bin/media/upload", params={"type": "voice"}, files={"media": ("a.amr", b"x")})
    assert info.value.errcode == 40004


def test_daily_api_quota_45009_is_recorded_not_retried(svc, sandbox, r):
    sender = make_sender(svc, sandbox)
    shopper_writes(sender, sandbox)
    sandbox.state.daily_send_quota = 1
    assert sender.deliver("d1", OPENID, ["一"]) == 1
    assert sender.deliver("d2", OPENID, ["二"]) == 0
    assert [c for c in sandbox.state.calls if c == ("/cgi-bin/message/custom/send", 45009)] == [
        ("/cgi-bin/message/custom/send", 45009)]  # asked once, not hammered
    assert undelivered(r)[0]["reason"] == "errcode_45009"
    assert r.hget(keys.METRICS, 'wxkf_sends_total{api="send",errcode="45009"}') == "1"
    assert sender.remaining(OPENID) == 4  # the refused send did not use the shopper's allowance
