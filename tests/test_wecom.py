"""The WeCom 微信客服 channel: callback crypto against WeCom's vectors, the pull (cursor, has_more,
dedup, one puller per account, failures), sending, welcome, session states and the console.

WeCom's servers are the sandbox's (`wxkf.wecom.sandbox`): tokens, cursors, the 48 h / 5-message
window, session states and errcodes as the protocol reference says. Everything else is real: Redis,
the crypto, the inbox, the worker and the dialogue engine.
"""
import dataclasses
import threading
import time
from urllib.parse import urlencode

import pytest

from wxkf import create_app, keys
from wxkf.services import Services
from wxkf.wecom.kf import msgid_for
from wxkf.wecom.sandbox import ACCOUNT, SERVICER
from wxkf.wecom.simulate import KfCallbackBuilder

from conftest import start_worker, wait_for

QUESTIONS = ["能开发票吗", "有优惠券吗", "我170穿什么码", "这个还有货吗", "快递到哪了", "怎么改收货地址",
             "能寄到国外吗", "想换个颜色", "怎么取消订单", "发票怎么开"]


def callback(client, kb_builder, world, open_kfid=ACCOUNT):
    path, body = kb_builder.request(kb_builder.event(open_kfid, world.new_callback_token()))
    resp = client.post(path, data=body)
    assert resp.status_code == 200, resp.data
    return resp


def run_until_quiet(worker, rounds=40):
    """Worker rounds until a round pulls and handles nothing."""
    for _ in range(rounds):
        if not worker.run_once(block_ms=50) and not worker.redis.hlen(keys.KF_WAKE):
            return
    raise AssertionError("worker never went quiet")


def replies_for(world, uid):
    return [m["text"]["content"] for m in world.sent_to(uid)]


# -- callback and crypto ---------------------------------------------------------------------------
def _client_for(svc, **changes):
    cfg = dataclasses.replace(svc.config, **changes)
    return create_app(services=Services(cfg, redis=svc.redis)).test_client()


def test_url_verification_returns_the_decrypted_echostr_of_wecoms_sample(svc):
    # Protocol ref. 7.3: WeCom's official sample (sbzhu/weworkapi_python), pad 7.
    client = _client_for(svc, kf_token="hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo", corpid="ww1436e0e65a779aee",
                         kf_aes_key="6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt")
    echostr = "fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA=="
    query = {"msg_signature": "012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb", "timestamp": "1476416373",
             "nonce": "47744683", "echostr": echostr}
    resp = client.get("/wecom/kf?" + urlencode(query))
    assert resp.status_code == 200
    assert resp.data == b"1288432023552776189"  # bare: no quotes, BOM or newline
    forged = client.get("/wecom/kf?" + urlencode(dict(query, nonce="47744684")))
    assert forged.status_code == 403


def test_url_verification_with_wechatpys_vector_and_a_wrong_corpid(svc):
    # Protocol ref. 7.4: wechatpy's own WeCom test; nonce 437374424 must fail.
    query = {"msg_signature": "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "timestamp": "1411443780",
             "nonce": "437374425",
             "echostr": "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="}
    good = dict(kf_token="123456", kf_aes_key="kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR")
    client = _client_for(svc, corpid="wx49f0ab532d5d035a", **good)
    assert client.get("/wecom/kf?" + urlencode(query)).data == b"5927782489442352469"
    assert client.get("/wecom/kf?" + urlencode(dict(query, nonce="437374424"))).status_code == 403
    # Right signature, but the receive id inside the ciphertext is another corp's: refused.
    other = _client_for(svc, corpid="ww0000000000000000", **good)
    assert other.get("/wecom/kf?" + urlencode(query)).status_code == 403


def test_callback_decryption_matches_wecoms_sample(svc):
    # Protocol ref. 7.3 DecryptMsg (pad 22): the CorpID is the receive id.
    from wxkf.wechat.crypto import PushCrypto
    crypto = PushCrypto("hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo", "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt",
                        "ww1436e0e65a779aee")
    encrypt = ("Kl7kjoSf6DMD1zh7rtrHjFaDapSCkaOnwu3bqLc5tAybhhMl9pFeK8NslNPVdMwmBQTNoW4mY7AIjeLvEl3NyeTkAgGzBhzTtRLNshw2AEew"
               "+kkYcD+Fq72Kt00fT0WnN87hGrW8SqGc+NcT3mu87Ha3dz1pSDi6GaUA6A0sqfde0VJPQbZ9U+3JWcoD4Z5jaU0y9GSh010wsHF8KZD24Yh"
               "mZH4ch4Ka7ilEbjbfvhKkNL65HHL0J6EYJIZUC2pFrdkJ7MhmEbU2qARR4iQHE7wy24qy0cRX3Mfp6iELcDNfSsPGjUQVDGxQDCWjayJOpcw"
               "ocugux082f49HKYg84EpHSGXAyh+/oxwaWbvL6aSDPOYuPDGOCI8jmnKiypE+")
    plain = crypto.decrypt(encrypt, "0c3914025cb4b4d68103f6bfc8db550f79dcf48e", "1476422779", "1597212914")
    assert plain == ("<xml><ToUserName>ww1436e0e65a779aee</ToUserName><FromUserName>ChenJiaShun</FromUserName>"
                     "<CreateTime>1476422779</CreateTime><MsgType>text</MsgType><Content>你好</Content>"
                     "<MsgId>1456453720</MsgId><AgentID>1000002</AgentID></xml>")


def test_a_callback_wakes_the_account_once_and_bad_callbacks_are_refused(svc, client, kb_builder, world, r):
    path, body = kb_builder.request(kb_builder.event(ACCOUNT, "ENCtoken1"))
    assert client.post(path, data=body).status_code == 200
    assert client.post(path, data=body).status_code == 200  # WeCom's retry: same wake-up, nothing more
    woken = r.hget(keys.KF_WAKE, ACCOUNT)
    assert woken.endswith(":ENCtoken1") and r.hlen(keys.KF_WAKE) == 1
    assert client.post(path, data=body).status_code == 200
    assert r.hget(keys.KF_WAKE, ACCOUNT) == woken  # the retry changed nothing
    r.delete(keys.KF_WAKE)
    # Forged signature, stale timestamp, broken XML, oversize body: refused, nothing woken.
    forged = path.replace("msg_signature=", "msg_signature=0")
    assert client.post(forged, data=body).status_code == 403
    stale_path, stale_body = kb_builder.request(kb_builder.event(ACCOUNT, "ENCt"), timestamp=int(time.time()) - 3600)
    assert client.post(stale_path, data=stale_body).status_code == 403
    assert client.post(path, data=b"<xml><Encrypt>").status_code in (400, 403)
    assert client.post(path, data=b"<xml>" + b"x" * (svc.config.max_body_bytes + 10)).status_code == 413
    other = KfCallbackBuilder(svc.config.kf_token, svc.config.kf_aes_key, "wwsomeoneelse0000")
    p2, b2 = other.request(other.event(ACCOUNT, "ENCt"))
    assert client.post(p2, data=b2).status_code == 403  # another corp's ciphertext
    assert r.hlen(keys.KF_WAKE) == 0


def test_the_channel_is_off_without_its_credentials(svc):
    client = _client_for(svc, corpid="", kf_secret="", kf_token="", kf_aes_key="")
    assert client.get("/wecom/kf?echostr=x").status_code == 404
    assert client.post("/wecom/kf", data=b"<xml/>").status_code == 404


def test_partial_wecom_credentials_are_a_config_error():
    from wxkf import config
    from wxkf.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        config.load(env={}, kf_secret="", kf_handoff="nobody")
    text = str(err.value)
    assert "kf_secret" in text and "kf_handoff" in text


# -- the pull --------------------------------------------------------------------------------------
def test_a_customer_message_is_pulled_answered_through_send_msg_and_shown_in_the_console(svc, client, kb_builder,
                                                                                         world, r):
    worker = start_worker(svc)
    uid = "wmCustomer0001"
    msgid = world.customer_message(uid, "能开发票吗")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    sent = world.sent_to(uid)
    assert len(sent) == 1
    assert sent[0]["open_kfid"] == ACCOUNT and "发票" in sent[0]["text"]["content"]
    assert sent[0]["msgid"] == msgid_for(f"wk_{msgid}:part:0")  # our idempotency key, ≤32 bytes
    assert r.hget(keys.kf_user(uid), f"state:{ACCOUNT}") == "1"  # new session, now the smart assistant's
    assert world.sessions[(ACCOUNT, uid)]["state"] == 1
    assert r.get(keys.kf_cursor(ACCOUNT))
    assert svc.channel_of(uid) == "wecom" and svc.channel_of("o_mini_program_shopper") == "wechat"
    roles = [t["role"] for t in svc.handoffs.transcript(uid)]
    assert roles == ["shopper", "bot"]


def test_a_burst_of_50_across_callbacks_with_a_failed_pull_is_answered_once_each_in_order(svc, client, kb_builder,
                                                                                          world, r):
    svc.kf.page_limit = 7  # many pages: has_more and the cursor are exercised
    worker = start_worker(svc)
    customers = [f"wmBurst{i:02d}" for i in range(10)]
    asked = {c: [] for c in customers}
    n = 0
    for wave in range(5):
        for c in customers:
            q = QUESTIONS[(wave + customers.index(c)) % len(QUESTIONS)]
            asked[c].append((world.customer_message(c, q), q))
            n += 1
        if wave in (2, 4):
            # sync_msg fails (WeCom busy, then an HTTP 502), in the middle of the burst and on its last
            # callback, which no later callback rescues: the retry after the backoff must.
            world.failures.append({"path": "/cgi-bin/kf/sync_msg", "errcode": -1 if wave == 2 else 502, "count": 1})
        callback(client, kb_builder, world)
        worker.run_once(block_ms=50)
    for _ in range(40):  # the failed pull is retried after its backoff
        run_until_quiet(worker)
        if all(len(world.sent_to(c)) == 5 for c in customers):
            break
        time.sleep(0.5)
    assert n == 50
    assert ("/cgi-bin/kf/sync_msg", -1) in world.calls
    for c in customers:
        sent = world.sent_to(c)
        expected = [msgid_for(f"wk_{m}:part:0") for m, _ in asked[c]]
        assert [s["msgid"] for s in sent] == expected, f"{c}: answered out of order, twice or not at all"
    assert r.hlen(keys.KF_WAKE) == 0 and r.hlen(keys.KF_RETRY) == 0
    assert int(r.hget(keys.METRICS, 'wxkf_kf_pulls_total{outcome="failed"}') or 0) == 2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "wxkf_kf_accounts_waiting 0" in metrics and 'wxkf_kf_pulls_total{outcome="failed"} 2' in metrics
    assert "wxkf_kf_messages_total 50" in metrics


def test_first_start_takes_the_cursor_without_answering_history(svc, client, kb_builder, world, r):
    old = time.time() - 86400
    for q in QUESTIONS[:3]:
        world.customer_message("wmHistory01", q, at=old)  # a day old: before wxkf ran
    fresh = world.customer_message("wmHistory02", "能开发票吗")
    worker = start_worker(svc)
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert world.sent_to("wmHistory01") == []
    assert [m["msgid"] for m in world.sent_to("wmHistory02")] == [msgid_for(f"wk_{fresh}:part:0")]
    cursor = r.get(keys.kf_cursor(ACCOUNT))
    assert cursor
    world.customer_message("wmHistory01", "有优惠券吗")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert len(world.sent_to("wmHistory01")) == 1  # only the new message
    assert r.get(keys.kf_cursor(ACCOUNT)) != cursor


def test_a_lost_cursor_or_a_second_pull_queues_nothing_twice(svc, client, kb_builder, world, r):
    worker = start_worker(svc)
    ids = [world.customer_message("wmTwice", q) for q in QUESTIONS[:3]]
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    # A worker that died after queueing a page and before saving its cursor: the page is read again.
    cursor = r.get(keys.kf_cursor(ACCOUNT))
    world.cursors["Cstart"] = 0
    r.set(keys.kf_cursor(ACCOUNT), "Cstart")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert [m["msgid"] for m in world.sent_to("wmTwice")] == [msgid_for(f"wk_{i}:part:0") for i in ids]
    assert r.get(keys.kf_cursor(ACCOUNT)) != cursor
    assert int(r.hget(keys.METRICS, "wxkf_duplicates_total") or 0) == 3


def test_two_workers_pulling_the_same_account_at_once_queue_each_message_once(svc, world, r, redis_url):
    from wxkf.store import connect
    ids = [world.customer_message(f"wmPair{i % 4}", QUESTIONS[i % len(QUESTIONS)]) for i in range(24)]
    world.delays["/cgi-bin/kf/sync_msg"] = 0.2  # a pull of 5 pages takes over a second
    svc.kf.wake(ACCOUNT, "ENCpair")
    other = Services(svc.config, redis=connect(redis_url))
    for channel in (svc.kf, other.kf):
        channel.page_limit = 5
    results = {}
    threads = [threading.Thread(target=lambda name, ch: results.__setitem__(name, ch.pull(ACCOUNT, name)),
                                args=(name, ch)) for name, ch in (("a", svc.kf), ("b", other.kf))]
    threads[0].start()
    assert wait_for(lambda: r.exists(keys.kf_pull_lock(ACCOUNT)), interval=0.005)  # "a" is pulling (≥ 1 s)
    threads[1].start()  # "b" comes for the same account meanwhile
    for t in threads:
        t.join()
    assert results == {"a": 24, "b": 0}  # one pulled, the other saw the lock
    assert world.calls.count(("/cgi-bin/kf/sync_msg", 0)) == 5  # 24 messages, pages of 5, read once
    queued = sum(r.xlen(keys.inbox(s)) for s in range(svc.config.inbox_shards))
    assert queued == len(ids)
    assert r.hlen(keys.KF_WAKE) == 0 and not r.exists(keys.kf_pull_lock(ACCOUNT))


def test_a_callback_during_a_pull_is_not_lost(svc, world, r):
    """The wake-up that arrives while another process pulls makes that puller go round again."""
    world.customer_message("wmRace", QUESTIONS[0])
    svc.kf.wake(ACCOUNT, "ENCfirst")
    calls = []
    real = svc.kf.api.call

    def call(path, body=None, **kw):
        out = real(path, body, **kw)
        if path.endswith("sync_msg") and not calls:
            calls.append(1)
            late = world.customer_message("wmRace", QUESTIONS[1])  # arrives after this page was read
            svc.kf.wake(ACCOUNT, "ENCsecond")
            calls.append(late)
        return out

    svc.kf.api.call = call
    assert svc.kf.pull(ACCOUNT, "a") == 2
    assert r.hlen(keys.KF_WAKE) == 0


def test_a_dead_pullers_account_is_pulled_once_its_lock_expires(svc, world, r):
    world.customer_message("wmDead", QUESTIONS[0])
    svc.kf.wake(ACCOUNT, "ENCdead")
    r.set(keys.kf_pull_lock(ACCOUNT), "dead-worker", px=60_000)  # it died holding the lock
    assert svc.kf.pull_due("alive") == 0
    r.pexpire(keys.kf_pull_lock(ACCOUNT), 1)  # its lock runs out (no timing race on a loaded machine)
    assert wait_for(lambda: not r.exists(keys.kf_pull_lock(ACCOUNT)))
    assert svc.kf.pull_due("alive") == 1
    assert r.hlen(keys.KF_WAKE) == 0


# -- welcome, session state, escalation ------------------------------------------------------------
def test_enter_session_sends_the_welcome_through_its_code_once(svc, client, kb_builder, world):
    worker = start_worker(svc)
    world.enter_session("wmWelcome")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    kb = worker.responder.store.get()
    assert [w["text"]["content"] for w in world.event_sends] == [kb.welcome]
    assert world.event_sends[0]["touser"] == "wmWelcome"
    world.enter_session("wmWelcome")  # within 48 h: WeCom gives no code, and nothing is sent
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert len(world.event_sends) == 1
    assert world.sent_to("wmWelcome") == []


def test_escalation_moves_the_session_to_the_pool_and_the_bot_stays_silent_until_it_ends(svc, client, kb_builder,
                                                                                         world, r):
    worker = start_worker(svc)
    uid = "wmAngry"
    world.customer_message(uid, "转人工")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    kb = worker.responder.store.get()
    assert replies_for(world, uid) == [kb.escalation_reply]  # said while the session was still the bot's
    assert world.sessions[(ACCOUNT, uid)]["state"] == 2  # WeCom's waiting pool
    assert svc.handoffs.held(uid)
    world.customer_message(uid, "能开发票吗")
    world.servicer_take(uid)
    world.servicer_message(uid, "您好，我是张三")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert replies_for(world, uid) == [kb.escalation_reply]  # silent while humans have it
    state = svc.handoffs.get(uid)
    assert state["status"] == "claimed" and state["agent"] == SERVICER
    lines = [(t["role"], t["text"]) for t in svc.handoffs.transcript(uid)]
    assert ("agent", "您好，我是张三") in lines and ("shopper", "能开发票吗") in lines
    world.servicer_end(uid)
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert not svc.handoffs.held(uid) and r.hget(keys.kf_user(uid), f"state:{ACCOUNT}") == "4"
    world.customer_message(uid, "有优惠券吗")  # a new session (4 -> 0): the bot answers again
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert len(replies_for(world, uid)) == 2 and world.sessions[(ACCOUNT, uid)]["state"] == 1


def test_escalation_to_a_named_servicer(svc, client, kb_builder, world):
    svc.kf.cfg = dataclasses.replace(svc.config, kf_handoff="servicer", kf_servicer=SERVICER)
    worker = start_worker(svc)
    world.customer_message("wmToZhang", "我要投诉你们")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    session = world.sessions[(ACCOUNT, "wmToZhang")]
    assert (session["state"], session["servicer"]) == (3, SERVICER)


def test_95018_when_a_servicer_took_the_session_unseen_keeps_the_bot_silent(svc, client, kb_builder, world, r):
    worker = start_worker(svc)
    uid = "wmTaken"
    world.customer_message(uid, "能开发票吗")
    # A servicer took the session in the WeCom client; its event is not pulled yet.
    world.sessions[(ACCOUNT, uid)].update(state=3, servicer=SERVICER)
    svc.kf.wake(ACCOUNT, "ENCx")
    run_until_quiet(worker)
    assert world.sent_to(uid) == []
    assert ("/cgi-bin/kf/send_msg", 95018) in world.calls
    assert r.hget(keys.kf_user(uid), f"state:{ACCOUNT}") == "3"  # learnt through service_state/get
    assert svc.handoffs.held(uid)
    undelivered = r.xrange(keys.UNDELIVERED)
    assert [e[1]["reason"] for e in undelivered] == ["errcode_95018"]
    assert any("机器人不再回复" in t["text"] for t in svc.handoffs.transcript(uid))
    world.customer_message(uid, "有优惠券吗")
    svc.kf.wake(ACCOUNT, "ENCy")
    run_until_quiet(worker)
    assert world.calls.count(("/cgi-bin/kf/send_msg", 95018)) == 1  # known now: not even tried


def test_console_lists_wecom_conversations_and_agents_reply_through_send_msg(svc, client, kb_builder, world, r):
    from wxkf.agents.accounts import Accounts
    from test_console import csrf, login
    Accounts(svc.redis).add("alice", "agent", "correct horse")
    svc.kf.cfg = dataclasses.replace(svc.config, kf_handoff="console")
    worker = start_worker(svc)
    uid = "wmConsole"
    world.customer_message(uid, "转人工")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert world.sessions[(ACCOUNT, uid)]["state"] == 1  # still the API's: console agents may send
    assert login(client).status_code == 302
    queue = client.get("/console/api/queue").get_json()["queue"]
    assert [(q["openid"], q["channel"]) for q in queue] == [(uid, "wecom")]
    assert "企业微信客服" in client.get("/console/").get_data(as_text=True)
    page = client.get(f"/console/c/{uid}").get_data(as_text=True)
    assert "企业微信客服" in page
    token = csrf(client, f"/console/c/{uid}")
    resp = client.post(f"/console/c/{uid}/reply", data={"text": "我来帮您开发票", "reply_id": "r1", "csrf_token": token})
    assert resp.status_code == 302
    worker.run_once(block_ms=50)
    sent = world.sent_to(uid)
    assert [m["text"]["content"] for m in sent][-1] == "我来帮您开发票"
    assert sent[-1]["msgid"] == msgid_for("agent:r1:part:0")


def test_every_message_type_and_event_becomes_an_inbound_record():
    from wxkf.wecom.kf import to_inbound
    base = {"open_kfid": ACCOUNT, "external_userid": "wmTypes", "send_time": 1700000000, "origin": 3}
    cases = {
        "text": ({"content": "你好", "menu_id": "101"}, {"Content": "你好", "menu_id": "101"}, "text"),
        "image": ({"media_id": "M1"}, {"MediaId": "M1"}, "image"),
        "voice": ({"media_id": "M2"}, {"MediaId": "M2"}, "voice"),
        "file": ({"media_id": "M3"}, {"MediaId": "M3"}, "file"),
        "link": ({"title": "T", "desc": "D", "url": "https://x", "pic_url": "p"},
                 {"Title": "T", "Description": "D", "Url": "https://x"}, "link"),
        "miniprogram": ({"title": "T", "appid": "wxa", "pagepath": "pages/a", "thumb_media_id": "m"},
                        {"Title": "T", "AppId": "wxa", "PagePath": "pages/a"}, "miniprogrampage"),
        "location": ({"latitude": 23.1, "longitude": 113.3, "name": "店", "address": "广州"},
                     {"Location_X": "23.1", "Location_Y": "113.3", "Label": "广州"}, "location"),
    }
    for msgtype, (body, fields, kind) in cases.items():
        got = to_inbound(dict(base, msgid=f"id_{msgtype}", msgtype=msgtype, **{msgtype: body}))
        assert (got["type"], got["fields"], got["openid"], got["to"], got["channel"]) == \
            (kind, fields, "wmTypes", ACCOUNT, "wecom"), msgtype
        assert got["id"] == f"wk_id_{msgtype}" and got["create_time"] == 1700000000
    event = to_inbound({"msgid": "e1", "origin": 4, "msgtype": "event", "send_time": 1700000000,
                        "event": {"event_type": "msg_send_fail", "open_kfid": ACCOUNT, "external_userid": "wmTypes",
                                  "fail_msgid": "x", "fail_type": 4}})
    assert (event["type"], event["event"], event["fields"]["fail_type"]) == ("event", "msg_send_fail", "4")
    # Not a customer's: no conversation to put it in. Malformed ids: refused.
    assert to_inbound({"msgid": "e2", "origin": 4, "msgtype": "event",
                       "event": {"event_type": "servicer_status_change", "servicer_userid": "zhangsan"}}) is None
    assert to_inbound(dict(base, msgid="bad", msgtype="text", text={"content": "x"},
                           external_userid="wm bad\r\nid")) is None
    assert to_inbound(dict(base, msgid="u", msgtype="unknown_type")) is None


def test_msg_send_fail_is_kept_and_said_in_the_transcript(svc, world, r):
    worker = start_worker(svc)
    world.customer_message("wmFail", "能开发票吗")
    world._append({"origin": 4, "msgtype": "event", "event": {
        "event_type": "msg_send_fail", "open_kfid": ACCOUNT, "external_userid": "wmFail", "fail_msgid": "m1",
        "fail_type": 10}})
    svc.kf.wake(ACCOUNT, "ENCfail")
    run_until_quiet(worker)
    assert [e[1]["reason"] for e in r.xrange(keys.UNDELIVERED)] == ["kf_msg_send_fail_10"]
    assert any("用户拒收" in t["text"] for t in svc.handoffs.transcript("wmFail"))


def test_wecoms_48_hour_rule_answers_95002_and_the_window_is_closed_locally(svc, world, sandbox, r):
    worker = start_worker(svc)
    world.customer_message("wmLate", "能开发票吗")
    sandbox.state.offset += 49 * 3600  # by WeCom's clock the 48 hours are over; ours still has it open
    svc.kf.wake(ACCOUNT, "ENClate")
    run_until_quiet(worker)
    assert world.sent_to("wmLate") == []
    assert ("/cgi-bin/kf/send_msg", 95002) in world.calls
    assert [e[1]["reason"] for e in r.xrange(keys.UNDELIVERED)] == ["errcode_95002"]
    assert svc.kf.sender.remaining("wmLate") == 0  # WeCom knows better: our window is closed too


def test_a_console_reply_to_a_session_wecom_gave_a_servicer_is_said_undelivered(svc, client, kb_builder, world):
    from wxkf.agents.accounts import Accounts
    from test_console import csrf, login
    Accounts(svc.redis).add("alice", "agent", "correct horse")
    worker = start_worker(svc)
    uid = "wmPooled"
    world.customer_message(uid, "转人工")
    callback(client, kb_builder, world)
    run_until_quiet(worker)
    assert world.sessions[(ACCOUNT, uid)]["state"] == 2
    assert login(client).status_code == 302
    token = csrf(client, f"/console/c/{uid}")
    client.post(f"/console/c/{uid}/reply", data={"text": "您好", "reply_id": "r2", "csrf_token": token})
    worker.run_once(block_ms=50)
    assert "您好" not in replies_for(world, uid)
    assert any("请在企业微信客户端回复" in t["text"] for t in svc.handoffs.transcript(uid))


def test_sandbox_wecom_tokens_expire_and_account_list_needs_one(svc, sandbox, world):
    import requests
    assert requests.get(sandbox.url + "/cgi-bin/kf/account/list", params={"access_token": "nope"},
                        timeout=5).json()["errcode"] == 40014
    assert requests.get(sandbox.url + "/cgi-bin/gettoken", params={"corpid": svc.config.corpid, "corpsecret": "x"},
                        timeout=5).json()["errcode"] == 40001
    accounts = svc.kf.api.call("/cgi-bin/kf/account/list", method="GET")["account_list"]
    assert [a["open_kfid"] for a in accounts] == [ACCOUNT]
    fetches = world.token_fetches
    sandbox.state.offset += 7200  # every token expired: one refresh, the call retried once
    assert svc.kf.api.call("/cgi-bin/kf/account/list", method="GET")["errcode"] == 0
    assert world.token_fetches == fetches + 1


def test_empty_pages_with_has_more_are_read_through(svc, world, r):
    """Protocol ref. 5.3: msg_list may be empty while has_more is 1; the cursor still moves."""
    worker = start_worker(svc)
    msgid = world.customer_message("wmEmpty", QUESTIONS[0])
    r.set(keys.kf_cursor(ACCOUNT), "Cstart")
    world.cursors["Cstart"] = 0
    world.empty_pages = 3
    svc.kf.wake(ACCOUNT, world.new_callback_token())
    run_until_quiet(worker)
    assert [m["msgid"] for m in world.sent_to("wmEmpty")] == [msgid_for(f"wk_{msgid}:part:0")]
    assert world.calls.count(("/cgi-bin/kf/sync_msg", 0)) == 4
