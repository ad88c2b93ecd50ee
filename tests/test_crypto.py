"""The official test vectors of protocol reference section 7, through wxkf's crypto (wechatpy's cipher)."""
import json

import pytest
from wechatpy.crypto import WeChatCrypto

from wxkf.errors import BadPush, BadSignature
from wxkf.wechat.crypto import PushCrypto, check_signature, sha1_signature

MP_E = ("+qdx1OKCy+5JPCBFWw70tm0fJGb2Jmeia4FCB7kao+/Q5c/ohsOzQHi8khUOb05JCpj0JB4RvQMkUyus8TPxLKJGQqcvZqzDpVzazhZv6JsXUn"
        "nR8XGT740XgXZUXQ7vJVnAG+tE8NUd4yFyjPy7GgiaviNrlCTj+l5kdfMuFUPpRSrfMZuMcp3Fn2Pede2IuQrKEYwKSqFIZoNqJ4M8EajAsjLY2km32"
        "IIjdf8YL/P50F7mStwntrA2cPDrM1kb6mOcfBgRtWygb3VIYnSeOBrebufAlr7F9mFUPAJGj04=")
MP_MSG = ('{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,'
          '"MsgType":"event","Event":"debug_demo","debug_str":"hello world"}')
OA_E = ("hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbU"
        "Ah0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NP"
        "hRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR"
        "8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=")
OA_MSG = ("<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]>"
          "</FromUserName>\n<CreateTime>1409735668</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[abcdteT]]>"
          "</Content>\n<MsgId>6054768590064713728</MsgId>\n</xml>")


@pytest.fixture
def mp():
    return PushCrypto("AAAAA", "A" * 43, "wxba5fad812f8e6fb9")


@pytest.fixture
def oa():
    return PushCrypto("spamtest", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wx2c2769f8efd9abc2")


def test_url_verification_signature_vector(mp):
    assert sha1_signature("AAAAA", "1714036504", "1514711492") == "f464b24fc39322e44b38aa78f5edd27bd1441696"
    mp.verify("f464b24fc39322e44b38aa78f5edd27bd1441696", "1714036504", "1514711492")


def test_plain_post_signature_vector(mp):
    mp.verify("899cf89e464efb63f54ddac96b0a0a235f53aa78", "1714037059", "486452656")


def test_wechatpy_own_signature_vector():
    check_signature("test", "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff", "1410685589", "test")


def test_oa_plain_signature_vector(oa):
    oa.verify("16120ec1b8dbb870f510d87ce6bc2463eae6ca1a", "1409735669", "1320562132")


def test_signature_mismatch_raises(mp):
    with pytest.raises(BadSignature):
        mp.verify("f464b24fc39322e44b38aa78f5edd27bd1441697", "1714036504", "1514711492")
    with pytest.raises(BadSignature):
        mp.verify("", "1714036504", "1514711492")


def test_mp_safe_mode_json_vector(mp):
    assert mp.decrypt(MP_E, "046e02f8204d34f8ba5fa3b1db94908f3df2e9b3", "1714112445", "415670741") == MP_MSG


def test_mp_vector_matches_plain_wechatpy():
    wc = WeChatCrypto("AAAAA", "A" * 43, "wxba5fad812f8e6fb9")
    assert wc.decrypt_message({"Encrypt": MP_E}, "046e02f8204d34f8ba5fa3b1db94908f3df2e9b3",
                              "1714112445", "415670741") == MP_MSG


def test_oa_compat_vector_nonzero_iv(oa):
    # "A"*43 is an all-zero key and IV; this vector catches a wrong IV.
    assert oa.decrypt(OA_E, "5d197aaffba7e9b25a30732f161a50dee96bd5fa", "1409735669", "1320562132") == OA_MSG


def test_msg_signature_must_cover_encrypt(oa):
    with pytest.raises(BadSignature):
        oa.decrypt(OA_E, "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a", "1409735669", "1320562132")


def test_encrypted_reply_vector(mp, monkeypatch):
    monkeypatch.setattr(mp._prp, "get_random_string", lambda: "707722b803182950")
    out = json.loads(mp.encrypt('{"demo_resp":"good luck"}', "415670741", 1713424427, fmt="json"))
    assert out == {"Encrypt": "ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ==",
                   "MsgSignature": "1b9339964ed2e271e7c7b6ff2b0ef902fc94dea1", "TimeStamp": 1713424427,
                   "Nonce": "415670741"}


def test_xml_reply_round_trips(oa):
    env = oa.encrypt("<xml><MsgType><![CDATA[transfer_customer_service]]></MsgType></xml>", "123", 1409735669)
    import xmltodict
    doc = xmltodict.parse(env)["xml"]
    assert doc["MsgSignature"] == sha1_signature("spamtest", "1409735669", "123", doc["Encrypt"])
    assert "transfer_customer_service" in oa.decrypt(doc["Encrypt"], doc["MsgSignature"], "1409735669", "123")


def _sign(c, enc, ts="1409735669", nonce="1"):
    return sha1_signature(c.token, ts, nonce, enc)


def test_wrong_appid_inside_ciphertext_is_refused(oa):
    other = PushCrypto("spamtest", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wxOTHERAPP000000")
    enc = other._prp.encrypt("<xml/>", "wxOTHERAPP000000").decode()
    with pytest.raises(BadSignature, match="AppID"):
        oa.decrypt(enc, _sign(oa, enc), "1409735669", "1")


def test_bad_padding_is_refused(oa):
    import base64
    # Valid blocks under another key: the padding (and everything else) decrypts to garbage.
    wrong_key = PushCrypto("spamtest", "B" * 43, "wx2c2769f8efd9abc2")
    enc = wrong_key._prp.encrypt("<xml/>" * 5, "wx2c2769f8efd9abc2").decode()
    with pytest.raises((BadPush, BadSignature)):
        oa.decrypt(enc, _sign(oa, enc), "1409735669", "1")
    # Same key, last byte claiming 33 bytes of padding: strictly invalid PKCS#7 (K = 32).
    raw = bytearray(oa._prp.cipher.decrypt(base64.b64decode(OA_E)))
    raw[-1] = 33
    forged = base64.b64encode(oa._prp.cipher.encrypt(bytes(raw))).decode()
    with pytest.raises(BadPush, match="padding"):
        oa.decrypt(forged, _sign(oa, forged), "1409735669", "1")


@pytest.mark.parametrize("enc, match", [(OA_E[:-7], "base64"), (OA_E[:40] + "====", "AES blocks"), ("%%%", "base64")])
def test_truncated_or_broken_base64_is_refused(oa, enc, match):
    with pytest.raises(BadPush, match=match):
        oa.decrypt(enc, _sign(oa, enc), "1409735669", "1")
