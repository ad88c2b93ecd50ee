"""`/wechat`: the push URL for Mini Programs and Official Accounts.

The push handler only verifies, decrypts, deduplicates and queues; its work is a few Redis-free CPU
steps plus one atomic Redis script, so WeChat gets its `success` within milliseconds whatever the
model is doing (protocol ref. 1.9: 5 s deadline, up to 3 retries).

A push is answered by a plain WSGI handler in front of Flask (`wsgi`): the request and application
contexts, the session interface, URL matching and the response object cost as much CPU per push as
the Redis round trip, and a push needs none of them. Every other request, the URL verification GET
included, goes to Flask.
"""
import hashlib
import logging
import re
import time
from http import HTTPStatus
from urllib.parse import parse_qsl

import redis
from flask import Blueprint, current_app, request
from werkzeug.wsgi import get_content_length, get_input_stream

from ..errors import BadPush, BadSignature, KnowledgeError, PushError, PushTooLarge
from ..dialogue import escalation
from . import push, replies

log = logging.getLogger("wxkf.webhook")
bp = Blueprint("wechat", __name__)
PATH = "/wechat"
_TEXT = "text/plain; charset=utf-8"


def _plain(body, status=200):
    return body, status, {"Content-Type": _TEXT}


def read_limited(stream, length, max_bytes):
    """The body from `stream` (of `length` bytes when known), refusing anything over `max_bytes`
    before reading it all."""
    if length is not None and length > max_bytes:
        raise PushTooLarge(f"body of {length} bytes exceeds {max_bytes}")
    body = stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise PushTooLarge(f"body exceeds {max_bytes} bytes")
    return body


def read_body(max_bytes):
    """The Flask request's body, refusing anything over `max_bytes` before reading it all."""
    return read_limited(request.stream, request.content_length, max_bytes)


_SECONDS = re.compile(r"[0-9]{1,12}")


def decode_push(svc, args, body):
    """Verify and decrypt one POST; return (fields, fmt). Raises a PushError."""
    cfg = svc.config
    signature, timestamp, nonce = args.get("signature"), args.get("timestamp", ""), args.get("nonce", "")
    if not (signature and timestamp and nonce):
        raise BadSignature("signature, timestamp and nonce are required")
    svc.crypto.verify(signature, timestamp, nonce)
    if not _SECONDS.fullmatch(timestamp) or abs(time.time() - int(timestamp)) > cfg.timestamp_window:
        raise BadSignature("timestamp outside the accepted window (stale or replayed push)")
    if args.get("encrypt_type", "raw") != "aes" and not cfg.plaintext_pushes:
        # The signature does not cover a plaintext body: with an EncodingAESKey set, only encrypted
        # pushes (safe or compatible mode) are trusted unless the operator opts in.
        raise BadSignature("plaintext push refused (set plaintext_pushes = true for an account in 明文 mode)")
    if not body.strip():
        raise BadPush("empty body")
    fmt = push.body_format(body)
    fields = push.parse_document(body, fmt)
    if args.get("encrypt_type", "raw") == "aes":
        plaintext = svc.crypto.decrypt(fields.get("Encrypt"), args.get("msg_signature", ""), timestamp, nonce)
        inner_fmt = push.body_format(plaintext.encode())
        fields = push.parse_document(plaintext, inner_fmt)
    return fields, fmt


@bp.get(PATH)
def verify_url():
    """URL verification: echo `echostr` verbatim when the signature holds (protocol ref. 1.2)."""
    svc = current_app.extensions["wxkf"]
    a = request.args
    try:
        svc.crypto.verify(a.get("signature"), a.get("timestamp", ""), a.get("nonce", ""))
    except BadSignature:
        log.warning("url verification refused: bad signature from %s", request.remote_addr)
        return _plain("forbidden", 403)
    if "echostr" not in a:
        return _plain("echostr missing", 400)
    return _plain(a["echostr"])


def wsgi(app, svc):
    """`app` (Flask's WSGI callable) with POST /wechat answered in front of it."""
    def dispatch(environ, start_response):
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != PATH:
            return app(environ, start_response)
        started = time.perf_counter()
        try:
            status, body, ctype = receive(svc, environ, arrived=started)
        except Exception:  # as Flask's handler would: logged with its traceback, answered 500
            log.exception("unhandled error in the push handler")
            status, body, ctype = 500, "internal error", _TEXT
        data = body.encode()
        start_response(_status_line(status), [("Content-Type", ctype), ("Content-Length", str(len(data)))])
        return _Sent(data, svc, time.perf_counter() - started) if status == 200 else [data]
    return dispatch


def _status_line(status):
    return f"{status} {HTTPStatus(status).phrase.upper()}"


class _Sent(list):
    """The answer's one chunk; once the server has sent it (WSGI's `close`), the push's time goes
    into the latency histogram, so no flush of it can delay an answer."""

    def __init__(self, data, svc, elapsed):
        super().__init__((data,))
        self.svc, self.elapsed = svc, elapsed

    def close(self):
        _observe(self.svc, self.elapsed)


def _args(environ):
    """The query string's parameters, the first of each name (as Flask's `request.args.get`)."""
    out = {}
    for name, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True):
        out.setdefault(name, value)
    return out


def receive(svc, environ, arrived):
    """One push, from its WSGI environ: (status, body, content type). `arrived`: when it arrived
    (perf_counter), for the log line."""
    args = _args(environ)
    try:
        body = read_limited(get_input_stream(environ, max_content_length=None), get_content_length(environ),
                            svc.config.max_body_bytes)
        fields, fmt = decode_push(svc, args, body)
        inbound = push.to_inbound(fields, fmt)
    except PushError as exc:
        reason = type(exc).__name__
        log.warning("push refused %s %s: %s", exc.status, reason, exc)
        _count(svc, "wxkf_pushes_rejected_total", status=str(exc.status), reason=reason)
        return exc.status, {403: "forbidden", 413: "too large"}.get(exc.status, "bad request"), _TEXT
    if inbound is None:
        kind = str(fields.get("MsgType", ""))
        kind = kind if kind in push.MESSAGE_TYPES or kind == "event" else "other"  # never attacker text
        log.info("push ignored type=%s event=%r", kind, str(fields.get("Event", ""))[:40])
        _count(svc, "wxkf_pushes_ignored_total", type=kind)
        return 200, "success", _TEXT
    escalation = _escalation(svc, inbound)
    try:
        signed = (args.get("timestamp", ""), args.get("nonce", ""), hashlib.sha1(body).hexdigest(),
                  2 * svc.config.timestamp_window)
        entry, held, started = svc.inbox.enqueue(inbound, escalation, svc.config.handoff_seconds, signed)
    except PushError as exc:  # a replayed signature with another body
        log.warning("push refused %s %s: %s", exc.status, type(exc).__name__, exc)
        _count(svc, "wxkf_pushes_rejected_total", status=str(exc.status), reason=type(exc).__name__)
        return exc.status, "forbidden", _TEXT
    except redis.RedisError as exc:
        # Not acknowledged: WeChat retries, and nothing is lost while Redis comes back.
        log.error("push %s not queued, Redis unavailable: %s", inbound["id"], exc)
        return 503, "service unavailable", _TEXT
    body, ctype = "success", _TEXT
    if held and inbound["type"] in push.MESSAGE_TYPES:
        # A human holds (or now takes) this shopper: WeChat forwards the message to its customer-
        # service tool. Retries of the same push get the same answer.
        encrypted = args.get("encrypt_type") == "aes"
        body, ctype = replies.render(replies.transfer(inbound, svc.config.kf_account), inbound["format"],
                                     svc.crypto if encrypted else None, args.get("nonce", ""),
                                     args.get("timestamp"))
    log.info("push id=%s type=%s openid=%s %s%s in %.1f ms", inbound["id"], inbound["event"] or inbound["type"],
             inbound["openid"], "queued " + entry if entry else "duplicate dropped",
             (" handoff started: " + escalation[0]) if started else " held by a human" if held else "",
             (time.perf_counter() - arrived) * 1000)
    return 200, body, ctype


def _escalation(svc, inbound):
    """(reason, priority) when the message itself needs a human, decided inside the push's time budget.

    With the model's reading on (`model_escalation`), only what the reading may never overrule is
    decided here: an explicit request for a person, and urgency. A complaint or anger cue word is
    left to the worker, whose reading keeps "你们前台小姐姐态度超好👍 停车能抵多久" with the bot and
    hands "你们前台态度太差了" to a human a fraction of a second later; started here, the handoff
    would silence the bot before the reading could say the message is calm."""
    fields = inbound["fields"]
    text = fields.get("Content") or (fields.get("Recognition") if inbound["type"] == "voice" else "")
    if not text:
        return None
    try:
        extra = svc.knowledge.get().escalation_keywords
    except KnowledgeError as exc:  # no good knowledge base yet: the built-in rules still apply
        log.error("escalation keywords unavailable: %s", exc)
        extra = ()
    reading = svc.config.model_scoring and svc.config.model_escalation
    found = escalation.detect(text, extra, skip=escalation.VETOABLE if reading else ())
    return (found.reason, found.priority) if found else None


def _count(svc, name, **labels):
    try:
        svc.metrics.inc(name, **labels)
    except redis.RedisError:
        pass


def _observe(svc, elapsed):
    try:
        svc.metrics.observe_buffered("wxkf_push_seconds", elapsed)
    except redis.RedisError:
        pass
