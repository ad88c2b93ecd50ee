"""`/wecom/kf`: the callback URL of a WeCom 微信客服 account (protocol ref. 5.1, 5.2).

GET is WeCom's URL verification: the `echostr` is encrypted, and must come back decrypted, bare.
POST carries only "messages wait for account X" (`kf_msg_or_event` with a Token): the view verifies
`msg_signature`, the timestamp and the CorpID inside the ciphertext, records the wake-up in Redis and
answers at once; a worker pulls the messages (`wxkf.wecom.kf`). 404 while the channel is off.
"""
import logging
import re
import time

import redis
from flask import Blueprint, current_app, request

from ..errors import BadPush, BadSignature, PushError
from ..wechat import push
from ..wechat.webhook import read_body

log = logging.getLogger("wxkf.wecom")
bp = Blueprint("wecom", __name__)

_SECONDS = re.compile(r"[0-9]{1,12}")
_KFID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _plain(body, status=200):
    return body, status, {"Content-Type": "text/plain; charset=utf-8"}


def _channel():
    svc = current_app.extensions["wxkf"]
    return svc, svc.kf


@bp.get("/wecom/kf")
def verify_url():
    svc, kf = _channel()
    if kf is None:
        return _plain("WeCom channel not configured", 404)
    a = request.args
    echostr = a.get("echostr", "")
    try:
        plain = svc.kf_crypto.verify_echostr(a.get("msg_signature"), a.get("timestamp", ""), a.get("nonce", ""), echostr)
    except PushError as exc:
        log.warning("WeCom url verification refused (%s): %s", exc.status, exc)
        return _plain("forbidden" if exc.status == 403 else "bad request", exc.status)
    return _plain(plain)  # bare: no quotes, BOM or newline


@bp.post("/wecom/kf")
def receive():
    svc, kf = _channel()
    if kf is None:
        return _plain("WeCom channel not configured", 404)
    a = request.args
    try:
        body = read_body(svc.config.max_body_bytes)
        timestamp, nonce = a.get("timestamp", ""), a.get("nonce", "")
        if not (a.get("msg_signature") and timestamp and nonce):
            raise BadSignature("msg_signature, timestamp and nonce are required")
        if not _SECONDS.fullmatch(timestamp) or abs(time.time() - int(timestamp)) > svc.config.timestamp_window:
            raise BadSignature("timestamp outside the accepted window (stale or replayed callback)")
        if not body.strip():
            raise BadPush("empty body")
        envelope = push.parse_document(body, push.body_format(body))
        plaintext = svc.kf_crypto.decrypt(envelope.get("Encrypt"), a.get("msg_signature"), timestamp, nonce)
        fields = push.parse_document(plaintext, push.body_format(plaintext.encode()))
    except PushError as exc:
        log.warning("WeCom callback refused %s %s: %s", exc.status, type(exc).__name__, exc)
        _count(svc, "wxkf_pushes_rejected_total", status=str(exc.status), reason=type(exc).__name__)
        return _plain({403: "forbidden", 413: "too large"}.get(exc.status, "bad request"), exc.status)
    if fields.get("MsgType") != "event" or fields.get("Event") != "kf_msg_or_event":
        log.info("WeCom callback ignored: event=%r", str(fields.get("Event", ""))[:40])
        _count(svc, "wxkf_pushes_ignored_total", type="wecom")
        return _plain("success")
    open_kfid, token = str(fields.get("OpenKfId") or ""), str(fields.get("Token") or "")
    if not _KFID.fullmatch(open_kfid) or len(token.encode()) > 128:
        log.warning("WeCom callback refused: OpenKfId or Token malformed")
        _count(svc, "wxkf_pushes_rejected_total", status="400", reason="BadPush")
        return _plain("bad request", 400)
    try:
        kf.wake(open_kfid, token)
        _count(svc, "wxkf_pushes_total", type="kf_msg_or_event")
    except redis.RedisError as exc:
        # Not acknowledged: WeCom retries the callback, and the messages wait in WeCom meanwhile.
        log.error("WeCom callback for %s not recorded, Redis unavailable: %s", open_kfid, exc)
        return _plain("service unavailable", 503)
    log.info("WeCom callback: messages wait for %s", open_kfid)
    return _plain("success")


def _count(svc, name, **labels):
    try:
        svc.metrics.inc(name, **labels)
    except redis.RedisError:
        pass
