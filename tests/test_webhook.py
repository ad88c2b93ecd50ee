"""The push URL: verification, the three encryption modes, XML and JSON, and every kind of bad input."""
import dataclasses
import re
import json

import pytest

from wxkf import create_app, keys
from wxkf.services import Services
from wxkf.wechat.crypto import sha1_signature
from wxkf.wechat.simulate import to_xml

from test_crypto import MP_E, OA_E


def queued(r, shards=16):
    return sum(r.xlen(keys.inbox(s)) for s in range(shards))


@pytest.fixture
def vector_client(cfg, r):
    """An app configured with the Mini Program doc's vector credentials; the vectors are from 2024."""
    c = dataclasses.replace(cfg, token="AAAAA", aes_key="A" * 43, appid="wxba5fad812f8e6fb9",
                            timestamp_window=10**10)
    return create_app(services=Services(c, redis=r)).test_client()


@pytest.fixture
def oa_client(cfg, r):
    c = dataclasses.replace(cfg, token="spamtest", aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
                            appid="wx2c2769f8efd9abc2", timestamp_window=10**10)
    return create_app(services=Services(c, redis=r)).test_client()


def test_url_verification_echoes_echostr_verbatim(vector_client):
    resp = vector_client.get("/wechat?signature=f464b24fc39322e44b38aa78f5edd27bd1441696&echostr=4375120948345356249"
                             "&timestamp=1714036504&nonce=1514711492")
    assert resp.status_code == 200
    assert resp.data == b"4375120948345356249"


def test_url_verification_with_bad_signature_is_403(vector_client):
    resp = vector_client.get("/wechat?signature=0000&echostr=1&timestamp=1714036504&nonce=1514711492")
    assert resp.status_code == 403
    assert b"1" != resp.data


def test_plaintext_json_vector_is_acknowledged(vector_client, r):
    body = ('{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714037059,'
            '"MsgType":"event","Event":"debug_demo","debug_str":"hello world"}')
    resp = vector_client.post("/wechat?signature=899cf89e464efb63f54ddac96b0a0a235f53aa78&timestamp=1714037059"
                              "&nonce=486452656", data=body)
    assert resp.status_code == 200 and resp.data == b"success"
    assert queued(r) == 0  # debug_demo is not a customer-service event


def test_safe_mode_json_vector_is_verified_and_acknowledged(vector_client, r):
    url = ("/wechat?signature=6c5c811b55cc85e0e1b54100749188c20beb3f5d&timestamp=1714112445&nonce=415670741"
           "&openid=o9AgO5Kd5ggOC-bXrbNODIiE3bGY&encrypt_type=aes&msg_signature=046e02f8204d34f8ba5fa3b1db94908f3df2e9b3")
    resp = vector_client.post(url, data=json.dumps({"ToUserName": "gh_97417a04a28d", "Encrypt": MP_E}))
    assert resp.status_code == 200 and resp.data == b"success"
    assert r.hget(keys.METRICS, 'wxkf_pushes_ignored_total{type="event"}') == "1"


def test_compatible_mode_xml_vector_queues_the_decrypted_message(oa_client, r):
    body = to_xml({"ToUserName": "gh_10f6c3c3ac5a", "FromUserName": "oyORnuP8q7ou2gfYjqLzSIWZf0rs",
                   "CreateTime": 1409735668, "MsgType": "text", "Content": "abcdteT", "MsgId": 6054768590064713728,
                   "Encrypt": OA_E})
    url = ("/wechat?signature=16120ec1b8dbb870f510d87ce6bc2463eae6ca1a&timestamp=1409735669&nonce=1320562132"
           "&encrypt_type=aes&msg_signature=5d197aaffba7e9b25a30732f161a50dee96bd5fa")
    resp = oa_client.post(url, data=body)
    assert resp.status_code == 200 and resp.data == b"success"
    entries = [e for s in range(16) for e in r.xrange(keys.inbox(s))]
    assert len(entries) == 1
    push = json.loads(entries[0][1]["push"])
    assert push["id"] == "6054768590064713728"
    assert push["openid"] == "oyORnuP8q7ou2gfYjqLzSIWZf0rs"
    assert push["fields"]["Content"] == "abcdteT"


def test_compat_mode_trusts_only_the_encrypted_copy(oa_client, r):
    """A tampered plaintext field next to the authentic Encrypt must not be what we act on."""
    body = to_xml({"ToUserName": "gh_10f6c3c3ac5a", "FromUserName": "attacker", "CreateTime": 1409735668,
                   "MsgType": "text", "Content": "tampered", "MsgId": 1, "Encrypt": OA_E})
    url = ("/wechat?signature=16120ec1b8dbb870f510d87ce6bc2463eae6ca1a&timestamp=1409735669&nonce=1320562132"
           "&encrypt_type=aes&msg_signature=5d197aaffba7e9b25a30732f161a50dee96bd5fa")
    assert oa_client.post(url, data=body).status_code == 200
    push = json.loads([e for s in range(16) for e in r.xrange(keys.inbox(s))][0][1]["push"])
    assert push["openid"] == "oyORnuP8q7ou2gfYjqLzSIWZf0rs" and push["fields"]["Content"] == "abcdteT"


@pytest.mark.parametrize("mode", ["plain", "compat", "safe"])
@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_every_mode_and_format_is_queued_once(client, builder, r, mode, fmt):
    fields = builder.message("o_shopper_1", text="我的快递到哪了", fmt=fmt)
    url, body = builder.request(fields, mode=mode, fmt=fmt)
    for _ in range(3):  # WeChat's retries
        resp = client.post(url, data=body)
        assert resp.status_code == 200 and resp.data == b"success"
    assert queued(r) == 1
    assert r.hget(keys.METRICS, "wxkf_duplicates_total") == "2"


def test_events_dedup_on_sender_time_and_event(client, builder, r):
    fields = builder.message("o_shopper_2", event="user_enter_tempsession", SessionFrom="goods_42")
    url, body = builder.request(fields)
    assert client.post(url, data=body).status_code == 200
    url2, body2 = builder.request(fields)  # a retry: new nonce and signature, same event
    assert client.post(url2, data=body2).status_code == 200
    assert queued(r) == 1


def test_forged_signature_is_403_and_nothing_queued(client, builder, r):
    url, body = builder.request(builder.message("o1", text="hi"), mode="plain")
    resp = client.post(url.replace("signature=", "signature=0"), data=body)
    assert resp.status_code == 403 and b"Traceback" not in resp.data
    assert queued(r) == 0


def test_forged_msg_signature_is_403(client, builder, r):
    url, body = builder.request(builder.message("o1", text="hi"), mode="safe")
    resp = client.post(url.replace("msg_signature=", "msg_signature=f"), data=body)
    assert resp.status_code == 403
    assert queued(r) == 0


def test_missing_signature_params_is_403(client, builder, r):
    _, body = builder.request(builder.message("o1", text="hi"), mode="plain")
    assert client.post("/wechat", data=body).status_code == 403
    assert queued(r) == 0


def test_wrong_appid_inside_ciphertext_is_403(client, cfg, r):
    from wxkf.wechat.simulate import PushBuilder
    other = PushBuilder(cfg.token, cfg.aes_key, "wxsomeoneelse000")
    url, body = other.request(other.message("o1", text="hi"), mode="safe")
    assert client.post(url, data=body).status_code == 403
    assert queued(r) == 0


def test_stale_timestamp_is_403(client, builder, r):
    import time
    old = int(time.time()) - 3600
    url, body = builder.request(builder.message("o1", text="hi", create_time=old), timestamp=old)
    resp = client.post(url, data=body)
    assert resp.status_code == 403
    assert queued(r) == 0
    assert r.hget(keys.METRICS, 'wxkf_pushes_rejected_total{reason="BadSignature",status="403"}') == "1"


def _signed(builder, body, encrypt=None):
    import time
    ts, nonce = str(int(time.time())), "42"
    q = f"signature={sha1_signature(builder.token, ts, nonce)}&timestamp={ts}&nonce={nonce}"
    if encrypt is not None:
        q += f"&encrypt_type=aes&msg_signature={sha1_signature(builder.token, ts, nonce, encrypt)}"
    return "/wechat?" + q, body


def test_bad_padding_in_a_validly_signed_push_is_400(client, builder, r):
    import base64
    prp = builder.crypto._prp
    raw = bytearray(prp.cipher.decrypt(base64.b64decode(prp.encrypt("<xml/>", builder.appid))))
    raw[-1] = 0
    enc = base64.b64encode(prp.cipher.encrypt(bytes(raw))).decode()
    url, body = _signed(builder, to_xml({"ToUserName": "gh", "Encrypt": enc}).encode(), enc)
    assert client.post(url, data=body).status_code == 400
    assert queued(r) == 0


def test_truncated_base64_is_400(client, builder, r):
    enc = builder.crypto._prp.encrypt("<xml><A>1</A></xml>", builder.appid).decode()[:-5]
    url, body = _signed(builder, to_xml({"ToUserName": "gh", "Encrypt": enc}).encode(), enc)
    assert client.post(url, data=body).status_code == 400
    assert queued(r) == 0


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<xml><FromUserName>&xxe;</FromUserName><MsgType>text</MsgType><CreateTime>1</CreateTime></xml>",
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">'
    b"<!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;\">]><xml><Content>&lol3;</Content></xml>",
    b"<xml><FromUserName>o1</FromUserName><MsgType>text",
    b'{"FromUserName": "o1", "MsgType": ',
    b"[1, 2, 3]",
    b"hello",
    b"<xml><FromUserName>o1</FromUserName></xml>",
])
def test_malformed_or_hostile_bodies_are_400(client, builder, r, body):
    url, body = _signed(builder, body)
    resp = client.post(url, data=body)
    assert resp.status_code == 400
    assert b"root:" not in resp.data and b"Traceback" not in resp.data
    assert queued(r) == 0


def test_empty_body_is_400(client, builder, r):
    url, _ = _signed(builder, b"")
    assert client.post(url, data=b"").status_code == 400


def test_oversize_body_is_413_before_reading_it(client, builder, r):
    url, _ = _signed(builder, b"")
    resp = client.post(url, data=b"<xml>" + b"a" * (10 * 1024 * 1024) + b"</xml>")
    assert resp.status_code == 413
    assert queued(r) == 0


def test_unknown_message_type_is_acknowledged_but_not_queued(client, builder, r):
    fields = builder.message("o1", msg_type="hologram")
    url, body = builder.request(fields)
    resp = client.post(url, data=body)
    assert resp.status_code == 200 and resp.data == b"success"
    assert queued(r) == 0
    assert r.hget(keys.METRICS, 'wxkf_pushes_ignored_total{type="other"}') == "1"  # never attacker text


def test_redis_down_answers_503_so_wechat_retries(cfg, builder):
    from wxkf.store import connect
    c = dataclasses.replace(cfg, redis_url="unix:///nonexistent/redis.sock")
    client = create_app(services=Services(c, redis=connect(c.redis_url))).test_client()
    url, body = builder.request(builder.message("o1", text="hi"))
    resp = client.post(url, data=body)
    assert resp.status_code == 503
    assert client.get("/healthz").status_code == 503


def test_healthz_reports_missing_workers(client):
    resp = client.get("/healthz")
    assert resp.status_code == 503
    assert resp.get_json()["redis"] == "ok" and resp.get_json()["workers"] == []


def test_metrics_render_prometheus_text(client, builder):
    url, body = builder.request(builder.message("o1", text="hi"))
    client.post(url, data=body)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'wxkf_pushes_total{type="text"} 1' in text
    assert "# TYPE wxkf_push_seconds histogram" in text
    assert "wxkf_queue_depth 1" in text


def test_queueing_survives_a_redis_script_flush(client, builder, r):
    """Redis forgets scripts on restart or SCRIPT FLUSH; the webhook loads it again."""
    url, body = builder.request(builder.message("o1", text="first"))
    assert client.post(url, data=body).status_code == 200
    r.script_flush()
    url, body = builder.request(builder.message("o1", text="second"))
    assert client.post(url, data=body).status_code == 200
    assert queued(r) == 2


_PROM_LINE = re.compile(r'^(# (HELP|TYPE) .*|[a-z_]+(\{([a-z_]+="([^"\\\n]|\\.)*",?)*\})? [-+0-9.eInf]+)$')


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_a_newline_in_msgtype_forges_no_log_line_and_keeps_metrics_parseable(client, builder, r, caplog, fmt):
    fields = builder.message("o1", msg_type='hologram\n2026-01-01 INFO wxkf forged{x="1"} 9')
    url, body = builder.request(fields, fmt=fmt)
    with caplog.at_level("INFO"):
        assert client.post(url, data=body).status_code == 200
    assert not any("\n" in rec.getMessage() for rec in caplog.records)
    text = client.get("/metrics").get_data(as_text=True)
    bad = [line for line in text.splitlines() if line and not _PROM_LINE.match(line)]
    assert not bad and "forged" not in text


def test_metric_label_values_are_escaped():
    from wxkf.metrics import field
    assert field("m", reason='a"b\\c\nd') == 'm{reason="a\\"b\\\\c\\nd"}'


@pytest.mark.parametrize("change", [
    {"FromUserName": "o1\nINFO forged"}, {"FromUserName": "o1 x"}, {"CreateTime": "9" * 5000},
    {"CreateTime": "²"}, {"CreateTime": "-5"}, {"MsgId": "12ab"},
])
def test_fields_wechat_never_sends_are_400_not_500(client, builder, r, change):
    fields = dict(builder.message("o1", text="hi"), **change)
    url, body = builder.request(fields)
    assert client.post(url, data=body).status_code == 400
    assert queued(r) == 0


def test_plaintext_pushes_are_refused_unless_the_operator_opts_in(cfg, builder, sandbox, r):
    """The signature covers no plaintext body: an account in safe mode must not accept one."""
    safe_only = create_app(services=Services(dataclasses.replace(cfg, plaintext_pushes=False), redis=r)).test_client()
    url, body = builder.request(builder.message("o1", text="伪造的消息"), mode="plain")
    assert safe_only.post(url, data=body).status_code == 403
    assert queued(r) == 0
    for mode in ("safe", "compat"):
        url, body = builder.request(builder.message("o1", text="真的消息"), mode=mode)
        assert safe_only.post(url, data=body).status_code == 200
    assert queued(r) == 2


def test_a_captured_signature_cannot_carry_another_body(client, builder, r):
    url, body = builder.request(builder.message("o1", text="我的快递到哪了"), mode="plain")
    assert client.post(url, data=body).status_code == 200
    assert client.post(url, data=body).status_code == 200  # WeChat's retry: same request, same body
    forged = to_xml(builder.message("o1", text="退款给我 123456", msg_type="text"))
    resp = client.post(url, data=forged.encode())  # the captured query string with another body
    assert resp.status_code == 403
    assert queued(r) == 1
    assert r.hget(keys.METRICS, 'wxkf_pushes_rejected_total{reason="Replayed",status="403"}') == "1"


def test_a_non_ascii_digit_timestamp_is_403_not_500(client, builder, r):
    url, body = builder.request(builder.message("o1", text="hi"), mode="plain", timestamp="²")
    assert client.post(url, data=body).status_code == 403


@pytest.mark.parametrize("body", [
    b"<xml>" + b"<a>" * 5000 + b"x" + b"</a>" * 5000 + b"</xml>",
    b'{"a":' * 40000 + b"1" + b"}" * 40000,  # under the body limit
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "' + "A" * 700 + '">]>'
     '<xml><ToUserName>&a;&a;&a;</ToUserName></xml>').encode("utf-16"),
    '<?xml version="1.0" encoding="gbk"?><xml><MsgType>text</MsgType></xml>'.encode("gbk"),
], ids=["xml-5000-deep", "json-40000-deep", "utf16-doctype-entities", "gbk"])
def test_deep_nesting_and_other_encodings_are_400_not_500(client, builder, r, body):
    url, _ = _signed(builder, b"")
    resp = client.post(url, data=body)
    assert resp.status_code == 400
    assert queued(r) == 0


def test_healthz_and_metrics_never_scan_the_keyspace(client, r, svc):
    """With 300k keys a scan took 0.6-0.9 s a call and stalled the acks (issue 8 #10)."""
    from wxkf import liveness
    pipe = r.pipeline(transaction=False)
    for i in range(5000):
        pipe.set(keys.sent(f"p{i}"), 1)
    pipe.execute()
    liveness.beat(r, "w1", 30)
    r.config_resetstat()
    for _ in range(3):
        assert client.get("/healthz").get_json()["workers"] == ["w1"]
        assert client.get("/metrics").status_code == 200
    stats = r.info("commandstats")
    assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats


def test_ops_endpoints_can_require_a_token(cfg, r, sandbox):
    c = create_app(services=Services(dataclasses.replace(cfg, ops_token="ops-s3cret"), redis=r)).test_client()
    for path in ("/healthz", "/metrics"):
        assert c.get(path).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer ops-s3cret"}).status_code in (200, 503)
    assert c.get("/metrics", headers={"Authorization": "Bearer ops-s3cret"}).status_code == 200


def test_an_unexpected_error_in_the_push_handler_is_500_logged_and_not_acknowledged(client, builder, svc, r,
                                                                                     caplog, monkeypatch):
    """A push is handled in front of Flask: a bug there must still answer 500 (WeChat retries the
    push, so nothing is lost), log its traceback, and leave the next push unaffected."""
    def broken(*a, **k):
        raise ValueError("a bug")
    monkeypatch.setattr(svc.inbox, "enqueue", broken)
    url, body = builder.request(builder.message("o1", text="我的快递到哪了"))
    with caplog.at_level("ERROR"):
        resp = client.post(url, data=body)
    assert resp.status_code == 500 and resp.data == b"internal error"
    assert any(rec.exc_info and "a bug" in str(rec.exc_info[1]) for rec in caplog.records)
    monkeypatch.undo()
    resp = client.post(url, data=body)  # WeChat's retry of the same push
    assert resp.status_code == 200 and resp.data == b"success"
    assert queued(r) == 1


def test_each_push_time_reaches_the_latency_histogram_after_the_answer(client, builder, svc):
    for i in range(3):
        url, body = builder.request(builder.message(f"o{i}", text="在吗"))
        with client.post(url, data=body) as resp:  # closed, as a WSGI server closes every answer
            assert resp.data == b"success"
    svc.metrics.flush()  # the handler flushes once a second; the test does not wait for it
    text = client.get("/metrics").get_data(as_text=True)
    assert re.search(r"^wxkf_push_seconds_count 3$", text, re.M), text


def test_the_first_of_a_repeated_query_parameter_is_the_one_checked(client, builder, r):
    """As Flask's request.args.get: a second `signature` appended to a signed URL changes nothing,
    and a forged first one is refused."""
    url, body = builder.request(builder.message("o1", text="hi"))
    assert client.post(url + "&signature=0000", data=body).status_code == 200
    forged = url.replace("signature=", "signature=0000&signature=", 1)
    assert client.post(forged, data=body).status_code == 403
    assert queued(r) == 1


def test_the_push_log_line_gives_the_push_own_handling_time(client, builder, caplog):
    """"queued ... in X ms" is the time this push took: never more than the request itself took
    (the handoff flag once shadowed the arrival time and logged a clock reading instead)."""
    import time
    url, body = builder.request(builder.message("o_timed", text="我的快递到哪了"))
    with caplog.at_level("INFO", logger="wxkf.webhook"):
        before = time.perf_counter()
        assert client.post(url, data=body).data == b"success"
        took_ms = (time.perf_counter() - before) * 1000
    line = next(rec.getMessage() for rec in caplog.records if "queued" in rec.getMessage())
    logged = float(re.search(r" in ([0-9.]+) ms$", line).group(1))
    assert 0 <= logged <= took_ms + 0.1, (line, took_ms)
