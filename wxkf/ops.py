"""`/healthz` and `/metrics` for operators."""
import hmac
import time

import redis
from flask import Blueprint, current_app, jsonify, request

from . import keys
from .liveness import alive_workers

bp = Blueprint("ops", __name__)


def _authorized():
    """With `ops_token` set, /healthz and /metrics answer only `Authorization: Bearer <token>`."""
    token = current_app.extensions["wxkf"].config.ops_token
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@bp.get("/healthz")
def healthz():
    if not _authorized():
        return jsonify(ok=False, problem="unauthorized"), 401
    svc = current_app.extensions["wxkf"]
    try:
        started = time.perf_counter()
        svc.redis.ping()
        redis_ms = (time.perf_counter() - started) * 1000
        workers = alive_workers(svc.redis)
        depth, age = svc.inbox.stats()
    except redis.RedisError as exc:
        return jsonify(ok=False, redis=f"unavailable: {type(exc).__name__}"), 503
    ok = bool(workers)
    body = dict(ok=ok, redis="ok", redis_ms=round(redis_ms, 2), workers=workers,
                queue_depth=depth, queue_age_seconds=round(age, 3))
    if not ok:
        body["problem"] = "no worker is alive: replies are not being sent"
    return jsonify(body), 200 if ok else 503


@bp.get("/metrics")
def metrics():
    if not _authorized():
        return "unauthorized\n", 401, {"Content-Type": "text/plain"}
    svc = current_app.extensions["wxkf"]
    try:
        depth, age = svc.inbox.stats()
        gauges = [
            ("wxkf_queue_depth", "Pushes queued or being processed.", depth),
            ("wxkf_queue_oldest_seconds", "Age of the oldest queued push.", round(age, 3)),
            ("wxkf_workers_alive", "Workers with a live heartbeat.", len(alive_workers(svc.redis))),
            ("wxkf_undelivered", "Replies kept because WeChat refused or could not be reached.",
             svc.redis.xlen(keys.UNDELIVERED)),
            ("wxkf_agent_replies_waiting", "Agents' replies queued for a worker to send.", svc.outbox.waiting()),
            ("wxkf_kf_accounts_waiting", "WeCom 微信客服 accounts whose messages wait to be pulled "
             "(a callback came; a pull that keeps failing keeps it here).", svc.redis.hlen(keys.KF_WAKE)),
        ]
        text = svc.metrics.render(gauges)
    except redis.RedisError:
        return "redis unavailable\n", 503, {"Content-Type": "text/plain"}
    return text, 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
