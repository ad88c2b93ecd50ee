"""HTTP calls to WeChat's API with one shared access token (protocol ref. 4).

Every process reads the token from Redis. When it is missing, exactly one process fetches it
(`cgi-bin/stable_token`, which returns the same token while valid and so never invalidates a token
another process is using) under a Redis lock; the others wait for it. On 40001/40014/42001 the
failing token is dropped only if it is still the shared one, one refresh happens, and the call is
retried once, never more (wechatpy retries without limit and can burn the daily token quota).
"""
import logging
import secrets
import time

import requests

from .. import defaults, keys
from ..errors import TokenInvalid, WeChatTimeout, WeChatUnreachable, api_error
from ..store import DELETE_IF_EQUAL

log = logging.getLogger("wxkf.api")



class WeChatAPI:
    TOKEN_API = "stable_token"
    """The API that issues tokens, for error messages; subclasses change `_request_token` and this."""

    def __init__(self, redis, api_base, appid, secret, metrics=None, http=None,
                 timeout=defaults.HTTP_TIMEOUT):
        self.redis = redis
        self.base = api_base.rstrip("/")
        self.appid = appid
        self._secret = secret
        self.metrics = metrics
        self.http = http or requests.Session()
        self.timeout = timeout
        self._del_if_equal = redis.register_script(DELETE_IF_EQUAL)

    # -- tokens ---------------------------------------------------------------------------------
    def token(self):
        return self.redis.get(keys.token(self.appid)) or self.refresh()

    def refresh(self, stale=None, force=False):
        """Single-flight fetch of a token other than `stale`."""
        key, lock = keys.token(self.appid), keys.token_lock(self.appid)
        me = secrets.token_hex(8)
        deadline = time.monotonic() + defaults.TOKEN_LOCK_SECONDS + 2
        while True:
            current = self.redis.get(key)
            if current and current != stale:
                return current
            if self.redis.set(lock, me, nx=True, ex=defaults.TOKEN_LOCK_SECONDS):
                try:
                    current = self.redis.get(key)
                    if current and current != stale:
                        return current
                    return self._fetch(force)
                finally:
                    self._del_if_equal(keys=[lock], args=[me])
            if time.monotonic() > deadline:
                raise WeChatUnreachable("timed out waiting for another process to refresh the access token")
            time.sleep(0.05)

    def _fetch(self, force):
        """Fetch a token from WeChat and share it in Redis until shortly before it expires."""
        data = self._request_token(force)
        if data.get("errcode"):
            raise api_error(data["errcode"], data.get("errmsg", ""), self.TOKEN_API)
        token, expires_in = data["access_token"], int(data.get("expires_in", 7200))
        ttl = max(30, expires_in - defaults.TOKEN_MARGIN)
        self.redis.set(keys.token(self.appid), token, ex=ttl)
        if self.metrics:
            self.metrics.inc("wxkf_token_refreshes_total")
        log.info("access token refreshed appid=%s force=%s ttl=%ss", self.appid, force, ttl)
        return token

    def _request_token(self, force):
        """POST cgi-bin/stable_token (protocol ref. 4): ≤7200 s lifetime; force_refresh ≤20/day, ≥30 s apart."""
        body = {"grant_type": "client_credential", "appid": self.appid, "secret": self._secret,
                "force_refresh": bool(force)}
        return self._http("POST", "/cgi-bin/stable_token", json_body=body)

    def code2session(self, code):
        """`sns/jscode2session`: the openid behind a `wx.login` code (single-use, 5 minutes). Raises
        the matching WeChatApiError (40029 invalid code, 40163 code used, 45011 too frequent). The
        session_key in the answer is dropped here: nothing in wxkf needs it."""
        data = self._http("GET", "/sns/jscode2session", params={
            "appid": self.appid, "secret": self._secret, "js_code": code, "grant_type": "authorization_code"})
        if data.get("errcode"):
            raise api_error(data["errcode"], data.get("errmsg", ""), "jscode2session")
        if not data.get("openid"):
            raise api_error(-1, "no openid in the answer", "jscode2session")
        return {k: data[k] for k in ("openid", "unionid") if k in data}

    def drop(self, token):
        """Forget `token` if it is still the shared one (another process may have replaced it)."""
        self._del_if_equal(keys=[keys.token(self.appid)], args=[token])

    # -- calls ----------------------------------------------------------------------------------
    def _http(self, method, path, json_body=None, params=None, files=None):
        url = self.base + path
        try:
            if files is not None:
                resp = self.http.request(method, url, params=params, files=files, timeout=self.timeout)
            else:
                resp = self.http.request(method, url, params=params, timeout=self.timeout,
                                         data=None if json_body is None else _json_bytes(json_body),
                                         headers={"Content-Type": "application/json; charset=utf-8"})
        except requests.ReadTimeout:
            raise WeChatTimeout(f"{path}: no answer within {self.timeout} s (it may have been acted on)") from None
        except requests.RequestException as exc:
            raise WeChatUnreachable(f"{path}: {type(exc).__name__}") from None
        if resp.status_code >= 500:
            raise WeChatUnreachable(f"{path}: HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise WeChatUnreachable(f"{path}: HTTP {resp.status_code} with a non-JSON body") from None
        if not isinstance(data, dict):
            raise WeChatUnreachable(f"{path}: HTTP {resp.status_code} with JSON that is not an object")
        return data

    def call(self, path, json_body=None, method="POST", params=None, files=None):
        """Call an API that takes `access_token`; raise the matching WeChatApiError on errcode ≠ 0."""
        for attempt in (1, 2):
            token = self.token()
            data = self._http(method, path, json_body, dict(params or {}, access_token=token), files)
            code = int(data.get("errcode", 0) or 0)
            if code == 0:
                return data
            err = api_error(code, data.get("errmsg", ""), path)
            if isinstance(err, TokenInvalid) and attempt == 1:
                log.warning("%s: errcode %s, refreshing the access token once", path, code)
                self.drop(token)
                fresh = self.refresh(stale=token)
                if fresh == token:
                    self.refresh(stale=token, force=True)
                continue
            raise err


def _json_bytes(obj):
    import json
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")
