"""The live process (`wxkf live`): requests that wait — server-sent events for the console.

The webhook's gunicorn runs sync workers, each answering one request at a time; WeChat's pushes must
be acknowledged within 5 s, so nothing that waits may run there. An open event stream waits for
minutes, so it is served by a separate gunicorn of thread workers (`gthread`, `live_threads` per
process) on `live_bind`, where a waiting stream costs one idle thread, and one `events.Hub` thread
per process reads Redis for all of them. The webhook process answers these paths at once with 503,
and the pages fall back to polling.

The console pages are served by the webhook process and open their stream here with a ticket (a
signed, 12-hour token naming the agent's console session), so the stream needs no cookie and works
across ports; logging out or disabling the account ends it at the next heartbeat.
"""
import hashlib
import hmac
import json
import re
import threading
import time

import redis

from flask import Blueprint, Response, current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from .events import Hub
from .pageapi import error_response

bp = Blueprint("live", __name__)

TICKET_SECONDS = 12 * 3600
HEARTBEAT_SECONDS = 15
STREAM_SECONDS = 30 * 60
"""A stream ends after this long and the browser reconnects (resuming with Last-Event-ID), so a
revoked ticket or a redeployed process never keeps a stale stream."""

_EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")


def valid_event_id(value):
    """A stream id Redis accepts: two parts of at most 2^64 - 1."""
    if not value or not _EVENT_ID.fullmatch(value):
        return False
    ms, seq = value.split("-")
    return int(ms) < 2 ** 64 and int(seq) < 2 ** 64


class Slots:
    """Requests that may wait at once in this process, so waiting streams and long polls always
    leave threads for /api/chat and the console's own requests (a quarter, at least 4)."""

    def __init__(self, threads):
        self.limit = max(1, threads - max(4, threads // 4))
        self._sem = threading.BoundedSemaphore(self.limit)

    def take(self):
        return self._sem.acquire(blocking=False)

    def give(self):
        self._sem.release()


def slots():
    app = current_app
    got = app.extensions.get("wxkf_slots")
    if got is None:
        got = app.extensions["wxkf_slots"] = Slots(app.extensions["wxkf"].config.live_threads)
    return got


def is_live():
    return current_app.config.get("WXKF_ROLE") == "live"


def hub():
    app = current_app
    h = app.extensions.get("wxkf_hub")
    if h is None:
        h = app.extensions["wxkf_hub"] = Hub(app.extensions["wxkf"].redis).start()
    return h


def _serializer(app=None):
    return URLSafeTimedSerializer((app or current_app).secret_key, salt="wxkf-live-ticket")


def _sid_digest(sid):
    return hmac.new(current_app.secret_key.encode(), f"live:{sid}".encode(), hashlib.sha256).hexdigest()[:32]


def ticket(name, sid):
    """What a console page gives its event stream: the agent and a digest of the console session
    (the ticket travels in a URL, so it must not carry the session id itself), signed."""
    return _serializer().dumps([name, _sid_digest(sid)])


def _agent(token):
    """The agent a ticket stands for while its console session is open, else None."""
    from . import keys
    from .agents.accounts import Accounts
    try:
        name, digest = _serializer().loads(token or "", max_age=TICKET_SECONDS)
    except (BadSignature, ValueError, TypeError):
        return None
    if not isinstance(name, str) or not isinstance(digest, str):
        return None
    acc = Accounts(current_app.extensions["wxkf"].redis)
    for sid in acc.redis.smembers(keys.user_sessions(name)):
        if hmac.compare_digest(_sid_digest(sid), digest):
            return name if acc.session_user(sid) == name and acc.get(name) else None
    return None


def _refused(code, message, status):
    resp = error_response(code, message, status)
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


def _unavailable(message="live updates are served by `wxkf live` (live_bind), not by this process"):
    return _refused("ERR_UNAVAILABLE", message, 503)


@bp.get("/console/events")
def console_events():
    """Notices for a console page: every change (the queue), or one conversation's (`?c=openid`).
    Each notice lists the conversations that changed; the page fetches what it shows itself."""
    if not is_live():
        return _unavailable()
    token = request.args.get("t", "")
    try:
        name = _agent(token)
    except redis.RedisError:
        return _unavailable("Redis is unavailable; retry shortly")
    if name is None:
        return _refused("ERR_AUTH", "ticket missing, expired or logged out; reload the page", 401)
    watch = request.args.get("c") or None
    after = request.headers.get("Last-Event-ID") or request.args.get("after") or ""
    h = hub()
    after = after if valid_event_id(after) else h.last_id()

    def match(openid, what):
        return openid == watch if watch else True

    def still_allowed():
        try:
            return _agent(token) == name
        except redis.RedisError:
            return True  # Redis away: the hub retries; heartbeats go on until it is back

    if not slots().take():
        return _unavailable("every live slot is taken; the page polls instead")
    return _stream(h, after, match, still_allowed, release=slots().give)


def _stream(h, after, match, still_allowed, release):
    app = current_app._get_current_object()
    resp = Response(_events(app, h, after, match, still_allowed), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                             "Access-Control-Allow-Origin": "*"})
    resp.call_on_close(release)  # the server closes every response, even one never read
    return resp


def _events(app, h, after, match, still_allowed):
    with app.app_context():
        yield "retry: 3000\n: open\n\n"
        ends = time.monotonic() + STREAM_SECONDS
        check = time.monotonic() + HEARTBEAT_SECONDS
        position = after
        while time.monotonic() < ends:
            found, position = h.wait(position, match, HEARTBEAT_SECONDS)
            if time.monotonic() >= check or not found:
                check = time.monotonic() + HEARTBEAT_SECONDS
                if not still_allowed():
                    yield "event: end\ndata: {}\n\n"
                    return
            if found:
                changed = sorted({openid for _, openid, _ in found})
                yield f"id: {position}\nevent: change\ndata: {json.dumps({'changed': changed})}\n\n"
            else:
                yield ": heartbeat\n\n"
