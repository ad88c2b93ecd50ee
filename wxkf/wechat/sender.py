"""The only place that sends to shoppers: WeChat's customer-service message API.

Owns the 48-hour / 5-message window per shopper (protocol ref. 2.4), text splitting at 2048 UTF-8
bytes, retries, the typing indicator and the per-message idempotency record. What cannot be
delivered is never dropped silently: it is logged, counted and kept in the `undelivered` stream.
"""
import json
import logging
import time

import redis as redis_lib

from .. import defaults, keys
from ..store import REPLICA_WAIT_MS, NotReplicated, on_one_connection
from ..errors import QuotaExceeded, WeChatError, WeChatTimeout

log = logging.getLogger("wxkf.sender")

# Opening a window never accumulates: allowance and expiry become the larger of what is left and
# what the new trigger grants (MP guide: "可发送客服消息条数不累加 ... 更新为当前可下发条数限制的最大值").
_OPEN = """
if KEYS[2] and redis.call('SET', KEYS[2], 1, 'NX', 'EX', tonumber(ARGV[3]) + 60) == false then
  -- This push opened the window already (it is being delivered again): it grants nothing more.
  local e = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0')
  if e <= tonumber(ARGV[1]) then return 0 end
  return tonumber(redis.call('HGET', KEYS[1], 'allowance') or '0') - tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
end
local now = tonumber(ARGV[1])
local exp = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0')
local left = 0
if exp > now then
  left = tonumber(redis.call('HGET', KEYS[1], 'allowance') or '0') - tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
end
local allowance = math.max(left, tonumber(ARGV[2]))
local expires = math.max(exp, now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'allowance', allowance, 'used', 0, 'expires', expires)
redis.call('EXPIREAT', KEYS[1], math.floor(expires) + 60)
return allowance
"""

# Take one message from the allowance: -1 = window closed, 0 = quota used up, else what is left after.
_TAKE = """
local now = tonumber(ARGV[1])
local exp = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0')
if exp <= now then return -1 end
local allowance = tonumber(redis.call('HGET', KEYS[1], 'allowance') or '0')
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
if used >= allowance then return 0 end
redis.call('HINCRBY', KEYS[1], 'used', 1)
return allowance - used
"""


SENDING = "sending:"
"""Prefix of the field marking a part as being sent (keys.sent(push_id) hash), written before the HTTP call."""


def split_text(text, limit=defaults.TEXT_LIMIT_BYTES):
    """Split into pieces of at most `limit` UTF-8 bytes, never inside a character, preferring line
    and sentence ends."""
    parts = []
    while len(text.encode("utf-8")) > limit:
        cut, size = 0, 0
        for i, ch in enumerate(text):
            size += len(ch.encode("utf-8"))
            if size > limit:
                break
            cut = i + 1
        window = text[:cut]
        best = max(window.rfind(sep) for sep in ("\n", "。", "！", "？", ". ", "；"))
        if best >= cut // 2:
            cut = best + 1
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip("\n")
    if text.strip():
        parts.append(text)
    return parts


def pack(texts, slots, limit=defaults.TEXT_LIMIT_BYTES):
    """Fit reply texts into at most `slots` messages: join before splitting, truncate as a last resort.

    Returns (parts, truncated)."""
    texts = [t for t in texts if t and t.strip()]
    if slots <= 0 or not texts:
        return [], False
    parts = []
    for text in texts:
        for piece in split_text(text, limit):
            if parts and len((parts[-1] + "\n\n" + piece).encode("utf-8")) <= limit:
                parts[-1] += "\n\n" + piece
            else:
                parts.append(piece)
    if len(parts) <= slots:
        return parts, False
    parts = split_text("\n\n".join(parts), limit)
    if len(parts) <= slots:
        return parts, False
    kept = parts[:slots]
    tail = "…（内容较长，已截断）"
    last = kept[-1]
    while len((last + tail).encode("utf-8")) > limit:
        last = last[:-1]
    kept[-1] = last + tail
    return kept, True


class Sender:
    """Sends through the Mini Program / Official Account customer-service API. The WeCom 微信客服
    channel's sender (`wxkf.wecom.kf.KfSender`) changes only the message and the API path."""

    SEND_PATH = "/cgi-bin/message/custom/send"
    API_NAME = "send"
    RESEND_INTERRUPTED = False
    """Whether a part another process was sending when it stopped may be sent again: only where the
    API takes an idempotency key (WeCom's msgid)."""

    def __init__(self, redis, api, metrics, typing=True, attempts=defaults.SEND_ATTEMPTS, clock=time.time,
                 replicas=0):
        self.redis = redis
        self.replicas = replicas
        self.api = api
        self.metrics = metrics
        self.typing_enabled = typing
        self.attempts = attempts
        self.clock = clock
        self._open = redis.register_script(_OPEN)
        self._take = redis.register_script(_TAKE)
        # Sends WeChat accepted whose record Redis has not confirmed (it went away in between):
        # {push_id: {field: value}}. Consulted before sending and written first once Redis is back,
        # so the redelivered message does not send the part again.
        self._unrecorded = {}
        # Parts this process marked as being sent and knows it has not sent (the mark was not
        # confirmed, or a refusal's mark could not be cleared): {(push_id, field)}. Its own mark
        # is no sign of a send cut by a crash.
        self._unsent = set()

    # -- the window ----------------------------------------------------------------------------
    def open_window(self, openid, trigger, at, push_id=None):
        """Record what a shopper action allows us to send (trigger: 'message' or an event name).
        With `push_id`, each push opens the window once: a redelivered push grants nothing again."""
        if trigger == "message":
            allowance, seconds = defaults.USER_MSG_QUOTA, defaults.USER_MSG_WINDOW
        elif trigger in defaults.EVENT_QUOTA:
            allowance, seconds = defaults.EVENT_QUOTA[trigger]
        else:
            return None
        remaining_at = min(float(at), self.clock())
        window_keys = [keys.quota(openid)] + ([keys.window_opened(push_id)] if push_id else [])
        return self._open(keys=window_keys, args=[remaining_at, allowance, seconds])

    def remaining(self, openid):
        q = self.redis.hgetall(keys.quota(openid))
        if not q or float(q.get("expires", 0)) <= self.clock():
            return 0
        return max(0, int(q.get("allowance", 0)) - int(q.get("used", 0)))

    # -- typing ---------------------------------------------------------------------------------
    def typing(self, openid, on=True):
        """message/custom/typing (protocol ref. 2.2): best effort, 15 s, only ≤30 s after the shopper wrote."""
        if not self.typing_enabled:
            return False
        try:
            self.api.call("/cgi-bin/message/custom/typing",
                          {"touser": openid, "command": "Typing" if on else "CancelTyping"})
            self.metrics.inc("wxkf_sends_total", api="typing", errcode="0")
            return True
        except WeChatError as exc:
            self.metrics.inc("wxkf_sends_total", api="typing", errcode=str(exc.errcode or "network"))
            log.info("typing indicator not shown openid=%s: %s", openid, exc)
            return False

    # -- sending --------------------------------------------------------------------------------
    def deliver(self, push_id, openid, texts):
        """Send a reply to one inbound message exactly once, within the shopper's window.

        The planned parts are stored under the message's idempotency key before the first send, and
        each part is marked as being sent before its HTTP call and as sent after it, so a worker that
        dies mid-reply, a re-delivered message and a worker taking a shard over in a failover never send
        a part twice. A part found marked but not recorded was cut mid-send: its outcome is unknown and,
        WeChat's send API having no idempotency key, it is recorded for agents instead of sent again.
        Returns the number of parts sent now.
        """
        key = keys.sent(push_id)
        self.record_pending()
        plan = self.redis.hget(key, "plan")
        if plan is None:
            parts, truncated = pack(texts, self.remaining(openid))
            if truncated:
                self.metrics.inc("wxkf_undelivered_total", reason="truncated")
                log.warning("reply to %s truncated to fit the shopper's remaining quota", push_id)
            if not parts:
                if texts:
                    self._undelivered(push_id, openid, texts, "window_closed_or_quota_used")
                return 0
            self.redis.hsetnx(key, "plan", json.dumps(parts, ensure_ascii=False))
            self.redis.expire(key, defaults.IDEMPOTENCY_TTL)
            parts = json.loads(self.redis.hget(key, "plan"))
        else:
            parts = json.loads(plan)
        sent = 0
        for i, part in enumerate(parts):
            field = f"part:{i}"
            if field in self._unrecorded.get(push_id, ()):
                continue
            done, cut = self.redis.hmget(key, field, SENDING + field)
            if done is not None:
                continue
            if cut is not None and not self.RESEND_INTERRUPTED and (push_id, field) not in self._unsent:
                # Another process was sending this part when it stopped (died, or lost its shard in a
                # failover) before recording the outcome: the shopper may have it, and WeChat's send
                # API has no idempotency key. Not sent again; recorded for agents, as a timeout is.
                self._record(push_id, field, "unknown")
                self._undelivered(push_id, openid, [part], "interrupted_unknown")
                log.error("reply part %d of push %s was being sent by a process that stopped; it may or may "
                          "not have arrived, not resending", i, push_id)
                continue
            message = self.message(openid, part, f"{push_id}:{field}")
            if not self._send_once(push_id, openid, message, field, parts[i:]):
                break
            sent += 1
        return sent

    def message(self, openid, text, key):
        """The API body for one text part; `key` names the part uniquely (WeCom's msgid uses it)."""
        return {"touser": openid, "msgtype": "text", "text": {"content": text}}

    def _send_once(self, push_id, openid, message, field, pending):
        """Take one message from the shopper's allowance, send, and mark `field` sent under the push's
        idempotency key. False (and `pending` kept as undelivered) when the window or WeChat refuses;
        raises, after recording, when WeChat cannot be reached."""
        left = self._take(keys=[keys.quota(openid)], args=[self.clock()])
        if left <= 0:
            self._undelivered(push_id, openid, pending, "window_closed" if left < 0 else "quota_used")
            return False
        self._unsent.add((push_id, field))
        try:
            self._mark_sending(push_id, field)
        except redis_lib.RedisError:
            self._refund(openid)  # nothing sent: the allowance is taken again on the next try
            raise
        self._unsent.discard((push_id, field))
        try:
            self.send(message)
        except QuotaExceeded as exc:
            self._unmark(push_id, field)  # refused: certainly not delivered
            self._sync_quota(openid, exc.errcode)
            self._undelivered(push_id, openid, pending, f"errcode_{exc.errcode}")
            return False
        except WeChatTimeout as exc:
            # Outcome unknown: the shopper may have it. Never sent again (not now, not on redelivery),
            # the allowance stays spent, and it is recorded as what it is for agents to check.
            self._record(push_id, field, "unknown")
            self._undelivered(push_id, openid, pending, "timeout_unknown")
            log.error("send to %s timed out; it may or may not have arrived, not resending: %s", openid, exc)
            return False
        except WeChatError as exc:
            self._unmark(push_id, field)
            self.redis.hincrby(keys.quota(openid), "used", -1)
            self._undelivered(push_id, openid, pending, f"errcode_{exc.errcode or 'network'}")
            raise
        self._record(push_id, field, int(self.clock()))
        return True

    def _mark_sending(self, push_id, field):
        """Say, before the HTTP call, that this part is being sent: a process taking the push over
        after this one stops then knows the outcome is unknown. With `redis_replicas`, confirmed by the
        replicas first, so that a failover cannot lose the mark (the part is then not sent at all)."""
        if not self.RESEND_INTERRUPTED:  # where a cut send is simply sent again, no mark is read
            self._write(push_id, {SENDING + field: int(self.clock())}, "send mark")

    def _write(self, push_id, fields, what):
        """Write `fields` under the push's idempotency key, confirmed by `redis_replicas` replicas on
        the same connection (else NotReplicated: a failover could lose it)."""
        key = keys.sent(push_id)
        with on_one_connection(self.redis, key) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, defaults.IDEMPOTENCY_TTL)
            if self.replicas:
                pipe.execute_command("WAIT", self.replicas, REPLICA_WAIT_MS)
            got = pipe.execute()
        if self.replicas and int(got[-1]) < self.replicas:
            raise NotReplicated(f"{what} of {push_id} not confirmed by {self.replicas} replica(s)")

    def _unmark(self, push_id, field):
        """The part certainly did not reach the shopper: clear its mark, so a redelivery sends it. While
        Redis cannot be told, this process remembers it."""
        if self.RESEND_INTERRUPTED:
            return
        self._unsent.add((push_id, field))
        self.redis.hdel(keys.sent(push_id), SENDING + field)
        self._unsent.discard((push_id, field))

    def _refund(self, openid):
        try:
            self.redis.hincrby(keys.quota(openid), "used", -1)
        except redis_lib.RedisError:
            log.warning("could not give back the allowance of an unsent part for %s", openid)

    def _record(self, push_id, field, value):
        """Mark a part sent. Remembered in this process first: if Redis fails now, the RedisError
        propagates (the message stays unacknowledged) but the part is not sent again."""
        self._unrecorded.setdefault(push_id, {})[field] = value
        self.record_pending()

    def record_pending(self):
        """Write the sends Redis missed; raises RedisError while it is still away."""
        for push_id in list(self._unrecorded):
            self._write(push_id, self._unrecorded[push_id], "send record")
            del self._unrecorded[push_id]

    def send(self, message):
        """POST the send API (cgi-bin/message/custom/send, protocol ref. 2.1); retry what retrying can fix."""
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            started = time.perf_counter()
            try:
                self.api.call(self.SEND_PATH, message)
            except WeChatError as exc:
                code = str(exc.errcode if exc.errcode is not None else "network")
                self.metrics.inc("wxkf_sends_total", api=self.API_NAME, errcode=code)
                if self.retryable(exc) and attempt < self.attempts:
                    log.warning("send to %s failed (%s), retry %d in %.1fs", message["touser"], exc, attempt, delay)
                    time.sleep(delay)
                    delay *= 2
                    continue
                log.error("send to %s failed: %s", message["touser"], exc)
                raise
            self.metrics.inc("wxkf_sends_total", api=self.API_NAME, errcode="0")
            self.metrics.observe("wxkf_send_seconds", time.perf_counter() - started)
            log.info("sent msgtype=%s to=%s", message["msgtype"], message["touser"])
            return

    def retryable(self, exc):
        """Whether sending the same message again can fix this failure. A timeout is not: WeChat may
        have delivered it, and its send API has no idempotency key."""
        return exc.retryable

    def _sync_quota(self, openid, errcode):
        """WeChat knows better: 45047 (WeCom 95001) = allowance used up, 45015 (WeCom 95002) = window
        closed; 45009 (the account's daily API limit) did not use the shopper's allowance."""
        if errcode == 45009:
            self.redis.hincrby(keys.quota(openid), "used", -1)
        elif errcode in (45047, 95001):
            allowance = self.redis.hget(keys.quota(openid), "allowance") or 0
            self.redis.hset(keys.quota(openid), "used", allowance)
        elif errcode in (45015, 95002):
            self.redis.hset(keys.quota(openid), "expires", 0)

    def _undelivered(self, push_id, openid, texts, reason):
        self.metrics.inc("wxkf_undelivered_total", reason=reason)
        log.warning("reply to push %s for %s not delivered: %s", push_id, openid, reason)
        self.redis.xadd(keys.UNDELIVERED, {"push_id": push_id, "openid": openid, "reason": reason,
                                           "texts": json.dumps(texts, ensure_ascii=False),
                                           "at": int(self.clock())}, maxlen=10000, approximate=True)
