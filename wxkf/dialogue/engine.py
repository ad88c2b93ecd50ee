"""The dialogue engine: message + conversation -> decision.

Order of questions for a text message:
1. a numbered pick ("1", "2", "第二个") of suggestions offered last turn;
2. escalation (a human is needed: urgent > complaint > anger > request > repeated failure);
3. the intent, with the previous turn's context for short follow-ups ("那发票呢");
4. gating on calibrated confidence: answer, offer the top 2-3 as numbered suggestions, or fall back.
Confident answers may be rephrased by the local model (checked by the generator's guard).
"""
import logging
import re

from . import escalation as escalation_mod
from .decision import Action, Decision
from .intent import IntentClassifier
from .textnorm import compact, normalize

log = logging.getLogger("wxkf.dialogue")

ANSWER_AT = 0.55
"""Confidence at or above which the bot answers directly (direct-answer precision ~97% on tests/eval)."""

SUGGEST_AT = 0.2
"""Confidence at or above which the bot offers numbered suggestions instead of falling back."""

_PICK = re.compile(r"^\s*(?:第\s*)?([1-3一二三])\s*(?:个|条|项)?\s*[.。、)）]?\s*$")
_PICK_WORDS = {"1": 0, "一": 0, "2": 1, "二": 1, "3": 2, "三": 2}
_FOLLOW_UP = re.compile(r"^(那|那么|还有|另外|如果|要是|那如果)")


class DialogueEngine:
    def __init__(self, store, generator=None):
        self.store = store
        self.generator = generator
        self._kb = None
        self._clf = None

    def warm_up(self):
        """Build the classifier (and jieba's dictionary) now rather than on the first shopper message."""
        self.classifier().rank("你好")
        return self

    def classifier(self):
        kb = self.store.get()
        if kb is not self._kb:
            self._kb, self._clf = kb, IntentClassifier(kb)
        return self._clf

    # -- the decision ---------------------------------------------------------------------------
    def decide(self, message, conversation):
        clf = self.classifier()
        kb = clf.kb
        if message.kind == "event":
            if message.event in ("user_enter_tempsession", "subscribe"):
                return Decision(Action.REPLY, kb.welcome, source="welcome")
            return Decision(Action.SILENT, source="silent")
        if message.kind != "text":
            template = kb.canned.get(message.kind)
            if not template:
                return Decision(Action.SILENT, source="silent")
            return Decision(Action.REPLY, template.replace("{title}", message.title or "这个页面"), source="canned")
        text = message.text.strip()
        if not text:
            return Decision(Action.SILENT, source="silent")
        decision = self._decide_text(text, conversation, clf)
        self._remember(conversation, text, decision)
        return decision

    def _decide_text(self, text, conversation, clf):
        kb = clf.kb
        pick = _PICK.match(text)
        if pick and conversation.pending:
            index = _PICK_WORDS[pick.group(1)]
            if index < len(conversation.pending):
                intent = kb.intent(conversation.pending[index])
                if intent:
                    return Decision(Action.REPLY, intent.answer, source="knowledge", intent=intent.id,
                                    confidence=1.0, reason="suggestion_picked")
        esc = escalation_mod.detect(text, kb.escalation_keywords, conversation.turns)
        if esc is None and self._repeated(text, conversation):
            esc = escalation_mod.Escalation("repeated_failure", escalation_mod.PRIORITY["repeated_failure"], "repeat")
        if esc:
            return Decision(Action.ESCALATE, kb.escalation_reply, source="escalate", reason=esc.reason,
                            priority=esc.priority)
        ranked = clf.rank(text)
        ranked = self._with_context(text, conversation, clf, ranked)
        top = ranked[0]
        runner = ranked[1].intent_id if len(ranked) > 1 and ranked[1].confidence >= 0.01 else None
        if top.confidence >= ANSWER_AT:
            intent = kb.intent(top.intent_id)
            return self._answer(text, intent, top.confidence, runner, kb)
        if top.confidence >= SUGGEST_AT:
            options = [r for r in ranked[:3] if r.confidence >= SUGGEST_AT / 2][:3]
            if len(options) >= 2:
                lines = [f"{i + 1}. {kb.intent(r.intent_id).title}" for i, r in enumerate(options)]
                reply = "您是想问：\n" + "\n".join(lines) + "\n回复数字即可。"
                return Decision(Action.REPLY, reply, source="suggest", intent=top.intent_id,
                                confidence=top.confidence, runner_up=runner,
                                suggestions=tuple(r.intent_id for r in options))
            intent = kb.intent(top.intent_id)
            return self._answer(text, intent, top.confidence, runner, kb)
        return Decision(Action.REPLY, kb.fallback, source="fallback", intent=None,
                        confidence=top.confidence, runner_up=top.intent_id)

    def _answer(self, text, intent, confidence, runner, kb):
        if self.generator is not None:
            out = self.generator.phrase(text, intent.answer, kb.persona)
            if out.text:
                return Decision(Action.REPLY, out.text, source="generated", intent=intent.id,
                                confidence=confidence, runner_up=runner)
            log.debug("generation rejected (%s); sending the approved answer", out.reason)
        return Decision(Action.REPLY, intent.answer, source="knowledge", intent=intent.id,
                        confidence=confidence, runner_up=runner)

    @staticmethod
    def _with_context(text, conversation, clf, ranked):
        """Short follow-ups ("那发票呢", "要多久") are read together with the previous question,
        unless they name a topic of their own confidently."""
        prev = conversation.last("user")
        if not prev:
            return ranked
        t = normalize(text)
        if not (_FOLLOW_UP.match(t) or len(compact(text)) <= 4):
            return ranked
        if clf.lexicon.concepts(t) and ranked[0].confidence >= ANSWER_AT:
            return ranked
        combined = clf.rank(prev["text"] + " " + text)
        return combined if combined[0].confidence > ranked[0].confidence or not clf.lexicon.concepts(t) else ranked

    @staticmethod
    def _repeated(text, conversation):
        """The shopper asks again what the bot just answered: the answer did not help."""
        prev = conversation.last("user")
        if not prev:
            return False
        a, b = compact(text), compact(prev["text"])
        if len(a) < 4 or len(b) < 4:
            return False
        if a == b:
            return True
        ga = {a[i:i + 2] for i in range(len(a) - 1)}
        gb = {b[i:i + 2] for i in range(len(b) - 1)}
        return len(ga & gb) / len(ga | gb) >= 0.8

    @staticmethod
    def _remember(conversation, text, decision):
        conversation.turns.append({"role": "user", "text": text, "intent": decision.intent})
        conversation.turns.append({"role": "bot", "source": decision.source, "intent": decision.intent})
        conversation.pending = list(decision.suggestions)
        del conversation.turns[:-10]
