"""Conversation state per shopper: the last turns and any pending suggestions.

Stored compactly (one JSON string per shopper, ~0.3-0.6 KB) with a 2-hour idle expiry, so 10,000
active conversations fit in a few MB of Redis. The store takes any client with get/set (a Redis
client in the worker, a dict-backed one in `wxkf chat`).
"""
import json

from .. import keys
from .decision import Conversation

MAX_EXCHANGES = 5
IDLE_SECONDS = 2 * 3600
TEXT_CHARS = 120


def _key(openid):
    return keys.conversation(openid)


class ConversationStore:
    def __init__(self, client, ttl=IDLE_SECONDS):
        self.client = client
        self.ttl = ttl

    def load(self, openid):
        raw = self.client.get(_key(openid))
        if not raw:
            return Conversation(openid)
        data = json.loads(raw)
        turns = []
        for t in data.get("t", []):
            if t[0] == "u":
                turns.append({"role": "user", "text": t[1], "intent": t[2] or None})
            else:
                turns.append({"role": "bot", "source": t[1], "intent": t[2] or None})
        return Conversation(openid, turns=turns, pending=data.get("p", []))

    def save(self, convo, client=None):
        """Store `convo`; `client` may be a Redis pipeline so the save joins a transaction."""
        turns = convo.turns[-2 * MAX_EXCHANGES:]
        packed = [["u", t["text"][:TEXT_CHARS], t.get("intent") or ""] if t["role"] == "user"
                  else ["b", t.get("source", ""), t.get("intent") or ""] for t in turns]
        data = {"t": packed}
        if convo.pending:
            data["p"] = convo.pending
        (client or self.client).set(_key(convo.openid), json.dumps(data, ensure_ascii=False, separators=(",", ":")), ex=self.ttl)


class MemoryClient:
    """A get/set client for single-process use (the CLI); no expiry."""

    def __init__(self):
        self.data = {}

    def get(self, key):
        return self.data.get(key)

    def set(self, key, value, ex=None):
        self.data[key] = value
