"""`/api/session`: sessions for a Mini Program's own chat page (issue 10, first part).

The page sends the `code` from `wx.login`; wxkf exchanges it with WeChat's `sns/jscode2session`
(through `api_base`, so the sandbox serves it in tests) and returns a short-lived token bound to the
shopper's openid and this Mini Program's AppID, signed with a key kept under `var/` (0600). Each token
names a server-side session in Redis: `POST /api/session/refresh` replaces it with a new one and ends
the old, so a token that was refreshed away, forged or expired is refused. WeChat's `session_key` is
never returned or logged. Errors carry a stable code the page can map to its fallback.
"""
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
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


def error_response(code, message, status, **extra):
    """The error body every page API and live answer uses: a stable code the page maps to its fallback."""
    resp = jsonify(error={"code": code, "message": message}, **extra)
    resp.status_code = status
    return resp


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
    if not isinstance(token, str) or not token.isascii() or token.count(".") != 1 or len(token) > 1024:
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
    data = request.get_json(silent=True)
    code = data.get("code") if isinstance(data, dict) else None
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        return error_response("ERR_BAD_REQUEST", "code from wx.login is required", 400)
    try:
        limit_key = keys.api_login_rate(request.remote_addr or "?", int(time.time() // 60))
        if svc.redis.incr(limit_key) > LOGINS_PER_MINUTE:
            if request.remote_addr in ("127.0.0.1", "::1") and not svc.config.trusted_proxies:
                # Behind a proxy every shopper has the proxy's address: one client could stop all logins.
                log.warning("page logins limited for %s: behind a proxy, set trusted_proxies", request.remote_addr)
            return error_response("ERR_RATE_LIMITED", "too many logins from this address; retry in a minute", 429)
        svc.redis.expire(limit_key, 120)
        got = svc.sender.api.code2session(code)
    except redis.RedisError:
        return error_response("ERR_UNAVAILABLE", "service unavailable, retry shortly", 503)
    except WeChatApiError as exc:
        # 40029 invalid code, 40163 code already used, 45011 too frequent: the page logs in again.
        log.info("jscode2session refused the code: errcode %s", exc.errcode)
        return error_response("ERR_AUTH", f"wx.login code refused (errcode {exc.errcode}); call wx.login again", 401)
    except WeChatError as exc:
        log.warning("jscode2session unreachable: %s", exc)
        return error_response("ERR_UNAVAILABLE", "WeChat could not be reached, retry shortly", 503)
    try:
        return jsonify(_issue(svc, got["openid"]))
    except redis.RedisError:
        return error_response("ERR_UNAVAILABLE", "service unavailable, retry shortly", 503)


@bp.post("/session/refresh")
def refresh():
    """A new token for a valid one; the old one stops working at once."""
    svc = current_app.extensions["wxkf"]
    try:
        found = verify(svc, _bearer())
        if found is None:
            return error_response("ERR_AUTH", "token missing, forged, expired or already refreshed; "
                                  "call wx.login again", 401)
        openid, sid = found
        if not svc.redis.delete(keys.api_session(sid)):  # two refreshes at once: only one wins
            return error_response("ERR_AUTH", "token already refreshed; call wx.login again", 401)
        return jsonify(_issue(svc, openid))
    except redis.RedisError:
        return error_response("ERR_UNAVAILABLE", "service unavailable, retry shortly", 503)


# -- chat -----------------------------------------------------------------------------------------
MAX_QUERY_CHARS = 4000
"""Longest page message accepted (the engine reads any length; this bounds what one request queues)."""

POLL_SECONDS = 25
"""Longest wait of a `/api/messages` long poll in the live process (under wx.request's 60 s default)."""

_MSGID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def _shopper(svc):
    """The openid of a valid Bearer token, or an error response."""
    found = verify(svc, _bearer())
    if found is None:
        return None, error_response("ERR_AUTH", "token missing, forged, expired or refreshed away; log in again", 401)
    return found[0], None


def _limited(svc, openid):
    """True when the shopper used up this minute's messages (`api_chat_per_minute`)."""
    minute = int(time.time() // 60)
    pipe = svc.redis.pipeline()
    pipe.incr(keys.api_chat_rate(openid, minute))
    pipe.expire(keys.api_chat_rate(openid, minute), 120)
    return pipe.execute()[0] > svc.config.api_chat_per_minute


def _page_inbound(svc, openid, query, msgid):
    """The inbound record of a page message, shaped as the webhook's (channel "page")."""
    digest = hashlib.sha1(f"{openid}:{msgid}".encode()).hexdigest()[:32] if msgid else secrets.token_hex(16)
    return {"id": "pg_" + digest, "format": "page", "channel": "page", "openid": openid, "to": svc.config.appid,
            "create_time": int(time.time()), "type": "text", "event": "", "fields": {"Content": query}}


WAITING_PER_SHOPPER = 2
"""Requests of one shopper that may wait at once in the live process (a chat answer, a long poll)."""


@contextlib.contextmanager
def _waiting(svc, openid):
    """Counts one shopper's waiting requests; yields whether this one may wait."""
    key = keys.api_waiting(openid)
    pipe = svc.redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, 120)  # a crashed process's count lapses
    count = pipe.execute()[0]
    try:
        yield count <= WAITING_PER_SHOPPER
    finally:
        svc.redis.decr(key)


def _wait_page(h, position, openid, seconds, get):
    """`get()` once something is there, or what it gives after `seconds`: woken by the live hub's
    notices for this shopper's page (after the event id `position`), never polling Redis in a loop."""
    deadline = time.monotonic() + seconds
    while True:
        found = get()
        left = deadline - time.monotonic()
        if found or left <= 0:
            return found
        _, position = h.wait(position, lambda o, k: o == openid and k == "page", left)


@bp.post("/chat")
def chat():
    """`{"query", "msgid"?}` -> `{"reply", "source", "suggestions", "escalated", "id"}`.

    Served by the live process (it waits for the worker's answer up to `api_wait` seconds); the
    webhook process answers 503 at once. A retried request with the same `msgid` is the same message:
    queued once, answered once. On ERR_AI_TIMEOUT the answer still comes, through /api/messages."""
    from .live import is_live
    svc = current_app.extensions["wxkf"]
    if not is_live():
        return error_response("ERR_UNAVAILABLE", "chat is served by `wxkf live` (live_bind); point the page there", 503)
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return error_response("ERR_BAD_REQUEST", 'a JSON body {"query": "..."} is required', 400)
    query, msgid = data.get("query"), data.get("msgid")
    if not isinstance(query, str) or not query.strip():
        return error_response("ERR_BAD_REQUEST", "query must be non-empty text", 400)
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a broken client: not text
        return error_response("ERR_BAD_REQUEST", "query must be valid UTF-8 text", 400)
    if len(query) > MAX_QUERY_CHARS:
        return error_response("ERR_TOO_LONG", f"query longer than {MAX_QUERY_CHARS} characters", 413)
    if msgid is not None and not (isinstance(msgid, str) and _MSGID.fullmatch(msgid)):
        return error_response("ERR_BAD_REQUEST", "msgid: 8-64 letters, digits, '-' or '_'", 400)
    try:
        openid, refused = _shopper(svc)
        if refused:
            return refused
        if _limited(svc, openid):
            resp = error_response("ERR_RATE_LIMITED", "too many messages; wait a minute", 429)
            resp.headers["Retry-After"] = str(60 - int(time.time()) % 60)
            return resp
        inbound = _page_inbound(svc, openid, query.strip(), msgid)
        from .live import hub
        h = hub()
        after = h.last_id()  # taken before queueing: the answer's notice cannot slip past
        with _waiting(svc, openid) as allowed:
            if not allowed:  # not queued: the page sends it again later
                return error_response("ERR_RATE_LIMITED", "two messages of yours are still being answered; retry", 429)
            svc.inbox.enqueue(inbound)
            svc.page.mark_active(openid)
            result = _wait_page(h, after, openid, svc.config.api_wait, lambda: svc.page.result(inbound["id"]))
            if result is None:
                log.info("page message %s not answered within api_wait", inbound["id"])
                return error_response("ERR_AI_TIMEOUT", "the answer is late; it will arrive through /api/messages",
                                      504, id=inbound["id"])
    except redis.RedisError:
        return error_response("ERR_UNAVAILABLE", "service unavailable, retry shortly", 503)
    body = {"id": inbound["id"], "reply": result["reply"], "source": result["source"],
            "suggestions": result["suggestions"], "escalated": result["escalated"]}
    resp = jsonify(body)
    resp.headers["ETag"] = '"%s"' % hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/messages")
def messages():
    """What the page was told after the mailbox id `after`: bot answers and agents' replies.

    `wait=N` (live process only, up to 25 s) holds the request until something comes: a long poll,
    which wx.request supports everywhere (Mini Programs have no EventSource). The webhook process
    answers at once."""
    from .live import hub, is_live, slots, valid_event_id
    svc = current_app.extensions["wxkf"]
    after = request.args.get("after", "")
    if after and not valid_event_id(after):
        return error_response("ERR_BAD_REQUEST", "after: an id from an earlier answer", 400)
    try:
        wait = float(request.args.get("wait", 0))
    except ValueError:
        wait = -1.0
    if not math.isfinite(wait) or wait < 0:
        return error_response("ERR_BAD_REQUEST", "wait: seconds, 0-25", 400)
    wait = min(wait, POLL_SECONDS)
    if wait > 0 and not is_live():
        # Long polls wait; the sync workers that acknowledge WeChat never do. The page backs off.
        return error_response("ERR_UNAVAILABLE", "long polls are served by `wxkf live` (live_bind); "
                              "point the page there", 503)
    try:
        openid, refused = _shopper(svc)
        if refused:
            return refused
        found = svc.page.messages(openid, after)
        if not found and wait > 0:
            # At most two waiting requests per shopper, and never every thread of the process: the
            # rest answer at once (the page polls again).
            if slots().take():
                try:
                    with _waiting(svc, openid) as allowed:
                        if allowed:
                            h = hub()
                            found = _wait_page(h, h.last_id(), openid, wait, lambda: svc.page.messages(openid, after))
                finally:
                    slots().give()
    except redis.RedisError:
        return error_response("ERR_UNAVAILABLE", "service unavailable, retry shortly", 503)
    out = [dict(entry, id=entry_id) for entry_id, entry in found]
    return jsonify(messages=out, next=out[-1]["id"] if out else (after or "0-0"))
