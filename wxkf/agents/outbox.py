"""Agents' replies, queued by the console and sent by the worker.

The web processes must acknowledge WeChat's pushes within milliseconds, so they never wait on
WeChat's send API (a slow WeChat would hold every sync gunicorn worker): the console queues an
agent's reply here, once per reply id (a double-submitted form queues it once), and shows it in the
transcript at once. The worker sends it through the Sender, with the reply id as its idempotency
key, like any reply. A reply WeChat refuses or the window no longer allows is kept in the
undelivered stream and said in the transcript, where the agent looks.

Delivery is at-least-once from a Redis stream consumer group: an entry a worker took and did not
acknowledge (it died, Redis went away) is claimed by any worker once it has been idle for
`claim_idle_ms`, and the Sender's record keeps it from being sent twice.
"""
import logging
import time

import redis as redis_lib

from .. import keys
from ..defaults import IDEMPOTENCY_TTL
from ..errors import SessionNotOurs, WeChatError
from ..store import ensure_group

log = logging.getLogger("wxkf.outbox")

GROUP = "senders"
MAXLEN = 100_000

# Queue a reply once per reply id: 1 when queued now, 0 when this reply id was queued before.
_SUBMIT = """
if redis.call('HSETNX', KEYS[1], 'queued', ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'reply_id', ARGV[4], 'openid', ARGV[5], 'text', ARGV[6],
           'agent', ARGV[7], 'at', ARGV[1])
return 1
"""


def push_id(reply_id):
    """The idempotency key an agent reply is sent under (the Sender's `keys.sent`)."""
    return f"agent:{reply_id}"


class Outbox:
    def __init__(self, redis, sender_for, handoffs, metrics, claim_idle_ms=60_000, clock=time.time):
        """`sender_for(openid)`: the Sender of the conversation's channel (Mini Program / OA or WeCom)."""
        self.redis = redis
        self.sender_for = sender_for
        self.handoffs = handoffs
        self.metrics = metrics
        self.claim_idle_ms = claim_idle_ms
        self.clock = clock
        self._submit = redis.register_script(_SUBMIT)
        self._own_pending = True  # at start, and after an error: re-read what this consumer took

    # -- the console's side ---------------------------------------------------------------------
    def submit(self, openid, text, agent, reply_id):
        """Queue an agent's reply and show it in the transcript; False when this reply id was queued
        already (the form was sent twice)."""
        queued = self._submit(keys=[keys.sent(push_id(reply_id)), keys.OUTBOX],
                              args=[round(self.clock(), 3), IDEMPOTENCY_TTL, MAXLEN, reply_id, openid, text, agent])
        # Idempotent too, so a retried submit after a Redis error still shows the line once.
        self.handoffs.log(openid, "agent", text, once=push_id(reply_id), agent=agent, reply_id=reply_id)
        return bool(queued)

    def waiting(self):
        """Replies queued and not yet sent: not yet taken by a worker (up to 1,000 counted), plus
        taken and not finished."""
        try:
            group = next((g for g in self.redis.xinfo_groups(keys.OUTBOX) if g["name"] == GROUP), None)
        except redis_lib.ResponseError:  # no stream yet
            return 0
        if group is None:
            return self.redis.xlen(keys.OUTBOX)
        last = group["last-delivered-id"]
        unread = len(self.redis.xrange(keys.OUTBOX, min=f"({last}", max="+", count=1000))
        return unread + int(group["pending"])

    # -- the worker's side ----------------------------------------------------------------------
    def ensure_group(self):
        ensure_group(self.redis, keys.OUTBOX, GROUP)

    def reread(self):
        """After an error: the entries this consumer took and did not finish are read again."""
        self._own_pending = True

    def drain(self, consumer, count=20):
        """Send what is queued, without blocking. Returns the number of replies handled; raises
        RedisError (the entries stay pending and are retried)."""
        entries = []
        if self._own_pending:
            entries += self._read(consumer, "0", count)
            self._own_pending = False
        _, claimed, *_ = self.redis.xautoclaim(keys.OUTBOX, GROUP, consumer, self.claim_idle_ms,
                                               start_id="0-0", count=count)
        for entry_id, fields in claimed:
            if fields:
                entries.append((entry_id, fields))
            else:  # trimmed from the stream while pending: nothing left to send
                self.redis.xack(keys.OUTBOX, GROUP, entry_id)
        entries += self._read(consumer, ">", count)
        done = set()
        for entry_id, fields in entries:
            if entry_id not in done:
                self._send(fields)
                self.redis.xack(keys.OUTBOX, GROUP, entry_id)
                done.add(entry_id)
        return len(done)

    def _read(self, consumer, start, count):
        got = self.redis.xreadgroup(GROUP, consumer, {keys.OUTBOX: start}, count=count)
        return [(entry_id, fields) for _, items in got for entry_id, fields in items if fields]

    def _send(self, fields):
        openid, reply_id = fields["openid"], fields["reply_id"]
        try:
            sent = self.sender_for(openid).deliver(push_id(reply_id), openid, [fields["text"]])
        except SessionNotOurs as exc:  # WeCom: the session is with WeCom's queue or a servicer
            self._failed(openid, reply_id, f"企业微信会话已不由接口接待（{exc.errcode}），请在企业微信客户端回复")
            return
        except WeChatError as exc:  # recorded as undelivered by the sender
            self._failed(openid, reply_id, f"微信返回错误 {exc.errcode if exc.errcode is not None else '（网络）'}")
            return
        if sent:
            self.metrics.inc("wxkf_agent_replies_total", outcome="sent")
            return
        before = self.redis.hget(keys.sent(push_id(reply_id)), "part:0")
        if before is None:  # nothing went out, now or before: the window closed or the quota ran out
            self._failed(openid, reply_id, "48小时窗口已关闭或5条额度已用完")
        elif before == "unknown":
            self._failed(openid, reply_id, "微信超时未答复，顾客可能已收到，为免重复未重发")

    def _failed(self, openid, reply_id, why):
        self.metrics.inc("wxkf_agent_replies_total", outcome="undelivered")
        log.warning("agent reply %s to %s not delivered: %s", reply_id, openid, why)
        self.handoffs.log(openid, "system", f"上一条客服回复未送达：{why}", once=push_id(reply_id),
                          reply_id=reply_id)
