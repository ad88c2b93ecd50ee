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
    assert again.status_code == 401 and again.get_json()["error"] == "ERR_AUTH" and "40163" in again.get_json()["message"]
    assert client.post("/api/session", json={"code": "made-up"}).get_json()["error"] == "ERR_AUTH"
    assert client.post("/api/session", json={}).get_json()["error"] == "ERR_BAD_REQUEST"
    assert client.post("/api/session", data=b"not json").status_code == 400
    code = code_for(sandbox, "o_slow")
    sandbox.state.offset += 301
    assert client.post("/api/session", json={"code": code}).get_json()["error"] == "ERR_AUTH"  # expired


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
    assert old.status_code == 401 and old.get_json()["error"] == "ERR_AUTH"
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
