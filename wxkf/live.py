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
import json
import re
import time

import redis

from flask import Blueprint, Response, current_app, jsonify, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from .events import Hub

bp = Blueprint("live", __name__)

TICKET_SECONDS = 12 * 3600
HEARTBEAT_SECONDS = 15
STREAM_SECONDS = 30 * 60
"""A stream ends after this long and the browser reconnects (resuming with Last-Event-ID), so a
revoked ticket or a redeployed process never keeps a stale stream."""

_EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")


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


def ticket(name, sid):
    """What a console page gives its event stream: the agent and console session, signed."""
    return _serializer().dumps([name, sid])


def _agent(token):
    """The agent a ticket stands for while its console session is open, else None."""
    from .agents.accounts import Accounts
    try:
        name, sid = _serializer().loads(token or "", max_age=TICKET_SECONDS)
    except (BadSignature, ValueError, TypeError):
        return None
    acc = Accounts(current_app.extensions["wxkf"].redis)
    return name if acc.session_user(sid) == name and acc.get(name) else None


def _unavailable():
    resp = jsonify(error={"code": "ERR_UNAVAILABLE",
                          "message": "live updates are served by `wxkf live` (live_bind), not by this process"})
    resp.status_code = 503
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


@bp.get("/console/events")
def console_events():
    """Notices for a console page: every change (the queue), or one conversation's (`?c=openid`).
    Each notice lists the conversations that changed; the page fetches what it shows itself."""
    if not is_live():
        return _unavailable()
    token = request.args.get("t", "")
    name = _agent(token)
    if name is None:
        resp = jsonify(error={"code": "ERR_AUTH", "message": "ticket missing, expired or logged out; reload the page"})
        resp.status_code = 401
        resp.headers["Access-Control-Allow-Origin"] = "*"
        return resp
    watch = request.args.get("c") or None
    after = request.headers.get("Last-Event-ID") or request.args.get("after") or ""
    h = hub()
    after = after if _EVENT_ID.fullmatch(after) else h.last_id()

    def match(openid, what):
        return openid == watch if watch else True

    def still_allowed():
        try:
            return _agent(token) == name
        except redis.RedisError:
            return True  # Redis away: the hub retries; heartbeats go on until it is back

    return _stream(h, after, match, still_allowed)


def _stream(h, after, match, still_allowed):
    app = current_app._get_current_object()

    def generate():
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

    return Response(generate(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                             "Access-Control-Allow-Origin": "*"})
