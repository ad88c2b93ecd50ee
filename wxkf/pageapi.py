"""`/api/session`: sessions for a Mini Program's own chat page (issue 10, first part).

The page sends the `code` from `wx.login`; wxkf exchanges it with WeChat's `sns/jscode2session`
(through `api_base`, so the sandbox serves it in tests) and returns a short-lived token bound to the
shopper's openid and this Mini Program's AppID, signed with a key kept under `var/` (0600). Each token
names a server-side session in Redis: `POST /api/session/refresh` replaces it with a new one and ends
the old, so a token that was refreshed away, forged or expired is refused. WeChat's `session_key` is
never returned or logged. Errors carry a stable code the page can map to its fallback.
"""
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time

import redis
from flask import Blueprint, current_app, jsonify, request

from . import keys
from .errors import WeChatApiError, WeChatError

log = logging.getLogger("wxkf.api")
bp = Blueprint("pageapi", __name__, url_prefix="/api")

TOKEN_SECONDS = 2 * 3600
"""A page token's life; the page refreshes it before then (WeChat's own login state is longer)."""

LOGINS_PER_MINUTE = 30
"""Code exchanges per client address and minute (WeChat itself limits jscode2session per user)."""

_CODE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _error(code, message, status):
    return jsonify(error=code, message=message), status


def _key(svc):
    """The signing key, kept under var/ (0600) and shared by this installation's web processes."""
    key = getattr(svc, "_page_api_key", None)
    if key is None:
        from .agents.console import _persistent_secret
        key = svc._page_api_key = _persistent_secret(svc.config, "api_secret").encode()
    return key


def _sign(svc, payload):
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
    mac = hmac.new(_key(svc), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def _issue(svc, openid):
    sid = secrets.token_urlsafe(18)
    exp = int(time.time()) + TOKEN_SECONDS
    svc.redis.set(keys.api_session(sid), openid, ex=TOKEN_SECONDS)
    return {"token": _sign(svc, {"o": openid, "a": svc.config.appid, "s": sid, "e": exp}), "expires_in": TOKEN_SECONDS}


def verify(svc, token):
    """The (openid, session id) a token stands for, or None: bad signature, other app, expired, or a
    session that was refreshed away or ended."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 1024:
        return None
    body, mac = token.split(".")
    if not hmac.compare_digest(hmac.new(_key(svc), body.encode(), hashlib.sha256).hexdigest(), mac):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError:
        return None
    if payload.get("a") != svc.config.appid or int(payload.get("e", 0)) <= time.time():
        return None
    if svc.redis.get(keys.api_session(str(payload.get("s", "")))) != payload.get("o"):
        return None
    return payload["o"], payload["s"]


def _bearer():
    auth = request.headers.get("Authorization", "")
    return auth[7:] if auth.startswith("Bearer ") else None


@bp.post("/session")
def session():
    svc = current_app.extensions["wxkf"]
    data = request.get_json(silent=True) or {}
    code = data.get("code")
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        return _error("ERR_BAD_REQUEST", "code from wx.login is required", 400)
    try:
        limit_key = keys.api_login_rate(request.remote_addr or "?", int(time.time() // 60))
        if svc.redis.incr(limit_key) > LOGINS_PER_MINUTE:
            return _error("ERR_RATE_LIMITED", "too many logins from this address; retry in a minute", 429)
        svc.redis.expire(limit_key, 120)
        got = svc.sender.api.code2session(code)
    except redis.RedisError:
        return _error("ERR_UNAVAILABLE", "service unavailable, retry shortly", 503)
    except WeChatApiError as exc:
        # 40029 invalid code, 40163 code already used, 45011 too frequent: the page logs in again.
        log.info("jscode2session refused the code: errcode %s", exc.errcode)
        return _error("ERR_AUTH", f"wx.login code refused (errcode {exc.errcode}); call wx.login again", 401)
    except WeChatError as exc:
        log.warning("jscode2session unreachable: %s", exc)
        return _error("ERR_UNAVAILABLE", "WeChat could not be reached, retry shortly", 503)
    try:
        return jsonify(_issue(svc, got["openid"]))
    except redis.RedisError:
        return _error("ERR_UNAVAILABLE", "service unavailable, retry shortly", 503)


@bp.post("/session/refresh")
def refresh():
    """A new token for a valid one; the old one stops working at once."""
    svc = current_app.extensions["wxkf"]
    try:
        found = verify(svc, _bearer())
        if found is None:
            return _error("ERR_AUTH", "token missing, forged, expired or already refreshed; call wx.login again", 401)
        openid, sid = found
        if not svc.redis.delete(keys.api_session(sid)):  # two refreshes at once: only one wins
            return _error("ERR_AUTH", "token already refreshed; call wx.login again", 401)
        return jsonify(_issue(svc, openid))
    except redis.RedisError:
        return _error("ERR_UNAVAILABLE", "service unavailable, retry shortly", 503)
