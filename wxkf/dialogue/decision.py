"""The worker's one question to the dialogue side: message + conversation -> decision.

Anything with a `decide(message, conversation) -> Decision` method can answer; the worker and the
CLI never look further inside, so a better engine drops in without touching either.
"""
import dataclasses
from enum import Enum


class Action(str, Enum):
    REPLY = "reply"
    ESCALATE = "escalate"
    SILENT = "silent"


@dataclasses.dataclass(frozen=True)
class Message:
    kind: str                 # text, image, voice, ..., or event
    text: str = ""            # what the shopper wrote (voice: WeChat's recognition)
    event: str = ""           # for kind == "event"
    title: str = ""           # miniprogrampage / link title

    @classmethod
    def from_inbound(cls, inbound):
        f = inbound.get("fields", {})
        kind = inbound["type"]
        text = f.get("Content", "")
        if kind == "voice" and f.get("Recognition"):
            kind, text = "text", f["Recognition"]
        return cls(kind=kind, text=text, event=inbound.get("event", ""), title=f.get("Title", ""))


@dataclasses.dataclass
class Conversation:
    """Recent turns (dicts: role user|bot, text, intent, source), newest last, and the intent ids
    offered as numbered suggestions in the last bot turn."""
    openid: str
    turns: list = dataclasses.field(default_factory=list)
    pending: list = dataclasses.field(default_factory=list)

    def last(self, role):
        return next((t for t in reversed(self.turns) if t["role"] == role), None)


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    text: str | None = None
    source: str = "fallback"  # knowledge | generated | suggest | fallback | escalate | canned | welcome | silent
    intent: str | None = None
    confidence: float = 0.0
    reason: str | None = None
    priority: int = 0
    runner_up: str | None = None
    suggestions: tuple = ()
    answered: tuple = ()      # the intents whose approved answers the reply carries

    def to_record(self):
        """A JSON-able dict (the worker stores each push's decision to reuse it on redelivery)."""
        return dict(dataclasses.asdict(self), action=self.action.value)

    @classmethod
    def from_record(cls, record):
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}
        return cls(Action(fields.pop("action")), **fields)
