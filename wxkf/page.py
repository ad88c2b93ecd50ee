"""The in-page channel: a Mini Program's own chat page talking to wxkf through `/api/chat` (issue 10).

A page message is queued into the same inbox as WeChat's pushes (`channel = "page"`), so the same
worker, dialogue engine, conversation, escalation, console and statistics handle it; the shopper is
the same openid as on the contact button. What the page is told goes into the shopper's mailbox in
Redis (a capped stream, `keys.page_mailbox`) instead of WeChat's send API:

- the bot's result for each message (`type = "reply"`: text, source, suggestions, escalated), once
  per message even when the message is redelivered, also kept under the message's idempotency key
  for `/api/chat`, which waits for it in the live process;
- agents' replies from the console (`type = "agent"`), through the same Outbox as other channels.

Each entry adds a change notice (`wxkf.events`, what = "page"), which wakes the waiting request and
any long poll of `/api/messages`. The mailbox holds ids and texts for the shopper only; it lives as
long as the transcript (7 days).
"""
import json
import time

from . import events, keys
from .agents.handoff import TRANSCRIPT_TTL
from .defaults import IDEMPOTENCY_TTL

MAILBOX_MAX = 200
ACTIVE_SECONDS = 48 * 3600
"""A shopper who wrote from the page within this time is answered there by agents (the last channel
used wins: a contact-button message moves the conversation back to WeChat's send API)."""

# Write one mailbox entry at most once per (message, field); notify the live process.
_ONCE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[3])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'entry', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'o', ARGV[7], 'k', 'page')
return 1
"""


class PageSender:
    """The Sender of the page channel: the shopper's mailbox, with no window or quota to respect."""

    def __init__(self, redis, clock=time.time):
        self.redis = redis
        self.clock = clock
        self._once = redis.register_script(_ONCE)

    def open_window(self, *args, **kwargs):
        return None

    def typing(self, openid, on=True):
        return False

    def remaining(self, openid):
        """None: the page has no send window or message quota."""
        return None

    def _write(self, push_id, field, openid, entry):
        body = json.dumps(dict(entry, at=round(self.clock(), 3)), ensure_ascii=False)
        return self._once(keys=[keys.sent(push_id), keys.page_mailbox(openid), keys.EVENTS],
                          args=[field, body, IDEMPOTENCY_TTL, MAILBOX_MAX, TRANSCRIPT_TTL, events.MAXLEN, openid])

    def deliver(self, push_id, openid, texts):
        """An agent's reply (the Outbox's path for every channel): into the mailbox, once per part."""
        # The fields are the WeChat sender's ("part:i"): the Outbox reads them to tell "sent before"
        # from "never sent" when a reply is redelivered.
        return sum(self._write(push_id, f"part:{i}", openid, {"type": "agent", "text": text})
                   for i, text in enumerate(texts))

    def reply(self, push_id, openid, text, source, suggestions=(), escalated=False, intent=None):
        """The bot's result for one page message, written once; `/api/chat` returns it."""
        self._write(push_id, "page:result", openid,
                    {"type": "reply", "reply_to": push_id, "reply": text, "source": source,
                     "suggestions": list(suggestions), "escalated": bool(escalated), "intent": intent})

    def result(self, push_id):
        """The bot's result for a page message, or None while the worker has not answered."""
        raw = self.redis.hget(keys.sent(push_id), "page:result")
        return json.loads(raw) if raw else None

    def messages(self, openid, after="-", count=50):
        """Mailbox entries after the stream id `after`: [(id, entry)]."""
        start = "-" if after in ("", "-", "0", "0-0") else "(" + after
        return [(i, json.loads(f["entry"])) for i, f in self.redis.xrange(keys.page_mailbox(openid), min=start,
                                                                           count=count)]

    # -- which channel a conversation is on -----------------------------------------------------
    def mark_active(self, openid):
        self.redis.set(keys.page_active(openid), 1, ex=ACTIVE_SECONDS)

    def is_page(self, openid):
        return bool(self.redis.exists(keys.page_active(openid)))

    def left(self, openid):
        """The shopper wrote through the contact button: agents answer there again."""
        self.redis.delete(keys.page_active(openid))
