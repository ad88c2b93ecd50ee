"""Who holds a conversation: the bot, or a human (protocol ref. 3).

A shopper is *held* while `{wxkf}:handoff:{openid}` exists. It is created when the dialogue engine
escalates (in the webhook for what the message itself says, so the push can be answered with WeChat's
passive `transfer_customer_service` reply; in the worker for repeated failure), and it lives 30
minutes past the last agent activity, WeChat's own idle rule. It ends when WeChat reports
`kf_close_session`, when an agent hands the shopper back or resolves in the console, or by expiry.
While it exists the bot says nothing to that shopper. The `{wxkf}:handoffs` sorted set indexes the
queue for the console; an entry whose state expired is reported as "returned to the bot".
"""
import json
import time
from enum import Enum

from .. import events, keys
from ..defaults import IDEMPOTENCY_TTL
from . import wording

HOLD_SECONDS = 30 * 60
"""Seconds a handoff lives without agent activity (WeChat stops forwarding after 30 idle minutes)."""

TRANSCRIPT_MAX = 200
TRANSCRIPT_TTL = 7 * 86400


class HandoffStatus(str, Enum):
    WAITING = "waiting"
    CLAIMED = "claimed"



def start_lua(state, index, reason, priority, now, hold, via, openid):
    """The Lua statements that start a handoff, given the Lua expressions for each value.

    The one definition of a handoff's fields, status, queue score and lifetime: used by START below
    and by the webhook's enqueue script (`wxkf.inbox`), which starts a handoff in the same atomic
    step that queues the push that asked for it."""
    return f"""
redis.call('HSET', {state}, 'status', '{HandoffStatus.WAITING.value}', 'reason', {reason}, 'priority', {priority},
           'since', {now}, 'activity', {now}, 'via', {via})
redis.call('EXPIRE', {state}, {hold})
redis.call('ZADD', {index}, tonumber({now}) - 100000 * tonumber({priority}), {openid})
"""


# Start (or keep) a handoff atomically. Returns 1 when this call created it, 0 when it existed.
START = ("if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end"
         + start_lua("KEYS[1]", "KEYS[2]", "ARGV[1]", "ARGV[2]", "ARGV[3]", "ARGV[4]", "ARGV[5]", "ARGV[6]")
         + "return 1\n")

# Append a transcript line once per (inbound push, role): the marker lives in the push's idempotency hash.
LOG_ONCE = """
if redis.call('HSETNX', KEYS[2], ARGV[2], 1) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[7])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'o', ARGV[7], 'k', ARGV[8])
return 1
"""


class Handoffs:
    def __init__(self, redis, hold_seconds=HOLD_SECONDS, clock=time.time):
        self.redis = redis
        self.hold = hold_seconds
        self.clock = clock
        self._start = redis.register_script(START)
        self._log_once = redis.register_script(LOG_ONCE)

    def start(self, openid, reason, priority, via):
        """Hand the shopper to humans; True if this call did it (False: already held)."""
        created = self._start(keys=[keys.handoff(openid), keys.HANDOFFS],
                              args=[reason, priority, self.clock(), self.hold, via, openid])
        if created:
            self.announce(openid, reason)
        return bool(created)

    def announce(self, openid, reason, once=None):
        """The transcript line that says a handoff started (once per push with `once`)."""
        self.log(openid, "system", f"转人工：{wording.reason(reason)}", once=once, reason=reason)

    def get(self, openid):
        return self.redis.hgetall(keys.handoff(openid)) or None

    def held(self, openid):
        return bool(self.redis.exists(keys.handoff(openid)))

    def touch(self, openid, agent=None, claim=False):
        """Agent activity: keeps the hold alive for another 30 minutes."""
        pipe = self.redis.pipeline()
        pipe.hset(keys.handoff(openid), "activity", self.clock())
        if claim:
            pipe.hset(keys.handoff(openid), mapping={"status": HandoffStatus.CLAIMED.value, "agent": agent or ""})
        pipe.expire(keys.handoff(openid), self.hold)
        if claim:
            events.publish(pipe, openid, "state")
        pipe.execute()

    def end(self, openid, why, who="system"):
        """Give the shopper back to the bot; returns False when nobody held it."""
        existed = self.redis.delete(keys.handoff(openid))
        self.redis.zrem(keys.HANDOFFS, openid)
        if existed:
            self.log(openid, "system", f"已交还机器人：{why}", by=who)
        return bool(existed)

    def queue(self):
        """Held conversations by priority then waiting time; expired ones are closed and reported."""
        out, expired = [], []
        for openid, _ in self.redis.zrange(keys.HANDOFFS, 0, -1, withscores=True):
            state = self.get(openid)
            if state is None:
                expired.append(openid)
                continue
            state["openid"] = openid
            out.append(state)
        for openid in expired:
            self.redis.zrem(keys.HANDOFFS, openid)
            self.log(openid, "system", "已交还机器人：30分钟无人工回复")
        return out, expired

    # -- transcript -----------------------------------------------------------------------------
    def log(self, openid, role, text, once=None, **extra):
        """Append to the transcript. With `once` (an inbound push id), the line for that push and role
        is written at most once, so a message redelivered after a crash or a Redis outage does not
        show twice in the console."""
        at = round(self.clock(), 3)
        entry = json.dumps(dict(extra, at=at, role=role, text=text), ensure_ascii=False)
        if once is not None:
            self._log_once(keys=[keys.transcript(openid), keys.sent(once), keys.CONVERSATIONS, keys.EVENTS],
                           args=[entry, f"log:{role}", TRANSCRIPT_MAX, TRANSCRIPT_TTL, IDEMPOTENCY_TTL, at, openid,
                                 role, events.MAXLEN])
            return
        pipe = self.redis.pipeline()
        pipe.rpush(keys.transcript(openid), entry)
        pipe.ltrim(keys.transcript(openid), -TRANSCRIPT_MAX, -1)
        pipe.expire(keys.transcript(openid), TRANSCRIPT_TTL)
        pipe.zadd(keys.CONVERSATIONS, {openid: at})
        events.publish(pipe, openid, role)
        pipe.execute()

    def conversations(self, since=None, until=None):
        """Every conversation with a transcript, newest activity first: [(openid, last activity)].
        Entries whose transcript expired are dropped from the index as they are met."""
        self.redis.zremrangebyscore(keys.CONVERSATIONS, "-inf", self.clock() - TRANSCRIPT_TTL)
        return self.redis.zrevrangebyscore(keys.CONVERSATIONS, until if until is not None else "+inf",
                                          since if since is not None else "-inf", withscores=True)

    def transcript(self, openid):
        return [json.loads(x) for x in self.redis.lrange(keys.transcript(openid), 0, -1)]
