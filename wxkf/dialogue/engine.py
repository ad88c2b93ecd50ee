"""The dialogue engine: message + conversation -> decision.

Order of questions for a text message:
1. a numbered pick ("1", "2", "第二个") of suggestions offered last turn;
2. escalation (a human is needed: urgent > complaint > anger > request > repeated failure);
3. what is asked (`understand.py`), with the greeting or thanks around it set aside, each of two
   questions in one message read on its own, and a short follow-up ("那早餐呢", "收费吗") read with the
   previous turn unless it names a topic of its own;
4. gating on calibrated confidence: answer, offer the top 2-3 as numbered suggestions, or fall back
   with the way to a human.
A confident answer is the approved text, sent as written; the model is used to understand, not to
rephrase (`generation = true` turns guarded rephrasing on; docs/dialogue.md has the measurements).
"""
import dataclasses
import logging
import re
import threading

from . import escalation as escalation_mod
from . import segment
from .decision import Action, Decision
from .textnorm import compact
from .understand import Understanding

log = logging.getLogger("wxkf.dialogue")

ANSWER_AT = 0.8
"""Confidence at or above which the bot answers directly: on the development trades the highest share
of right answers with wrong answers <= 3% of in-scope questions and out-of-scope questions answered
<= 10% (bench/fit_confidence.py: 0.363 right, 0.019 wrong, 0.096 out-of-scope; docs/dialogue.md)."""

SUGGEST_AT = 0.2
"""Confidence at or above which the bot offers numbered suggestions instead of falling back."""

SURE = 0.9
"""Confidence at which a short follow-up is taken on its own, whatever came before."""

OPTION_AT = 0.08
"""Least confidence for an intent to be listed among the suggestions."""

_PICK = re.compile(r"^\s*(?:第\s*)?([1-3一二三])\s*(?:个|条|项)?\s*[.。、)）]?\s*$")
_PICK_WORDS = {"1": 0, "一": 0, "2": 1, "二": 1, "3": 2, "三": 2}
_THANKS = re.compile(r"(谢|感谢|thank|thx|辛苦|好的|好嘞|ok|明白|知道了|收到|了解)", re.I)


def build_scorer(kb, llm, n_threads=2, max_candidates=16):
    """The model scorer over a knowledge base's intents (every intent's prompt evaluated now)."""
    from .scorer import NEUTRAL, ModelScorer, intent_prompt, neutral_prompt
    prompts = {i.id: intent_prompt(i.title, i.examples, i.answer) for i in kb.intents}
    prompts[NEUTRAL] = neutral_prompt([i.examples[0] for i in kb.intents])
    return ModelScorer(llm, prompts, n_threads=n_threads, max_candidates=max_candidates)


class DialogueEngine:
    """`llm`: the model that scores intents (None: lexical only). `background_reload`: when the knowledge
    base changes, answer from its lexical reading at once and build the model's prompts (seconds) on a
    thread, as the worker does; otherwise build them before answering (CLI, tests)."""

    def __init__(self, store, generator=None, llm=None, budget_seconds=0.8, background_reload=False,
                 read_escalation=True):
        self.store = store
        self.generator = generator
        self.llm = llm
        self.budget = budget_seconds
        self.background_reload = background_reload
        self._kb = None
        self._understanding = None
        self._retired = []
        self._lock = threading.Lock()
        # The escalation reader reads messages through the model scorer's context.
        self.reader = escalation_mod.Reader.for_model(llm) if llm is not None and read_escalation else None

    def warm_up(self):
        """Build the classifier, jieba's dictionary and the model's prompts now rather than on the first
        customer message."""
        self.understanding().read("你好")
        return self

    def understanding(self):
        kb = self.store.get()
        if kb is not self._kb:
            first = self._kb is None
            self._kb = kb
            if self.llm is None:
                self._swap(Understanding(kb, budget_seconds=self.budget))
            elif self.background_reload and not first:
                self._swap(Understanding(kb, budget_seconds=self.budget))
                threading.Thread(target=self._build, args=(kb,), name="scorer-build", daemon=True).start()
            else:
                self._build(kb)
        with self._lock:
            retired, self._retired = self._retired, []
        for old in retired:  # closed here, on the thread that scores, never while in use
            old.scorer.close()
        return self._understanding

    def _build(self, kb):
        try:
            scorer = build_scorer(kb, self.llm)
            if self.reader is not None:
                # The message's reading (taken anyway for escalation) also proposes candidates.
                scorer.learn_readings({i.id: [*i.examples, i.title] for i in kb.intents},
                                      self.reader.mean, self.reader.scale)
        except Exception:  # the bot answers without the model rather than not at all
            log.exception("could not build the model scorer; understanding without the model")
            scorer = None
        if kb is self._kb:
            self._swap(Understanding(kb, scorer, budget_seconds=self.budget))
            log.info("intent scorer ready for %d intents", len(kb.intents))
        elif scorer is not None:
            scorer.close()

    def _swap(self, understanding):
        with self._lock:
            old, self._understanding = self._understanding, understanding
            if old is not None and old.scorer is not None:
                self._retired.append(old)

    def classifier(self):
        """The lexical classifier of the current knowledge base."""
        return self.understanding().lexical

    # -- the decision ---------------------------------------------------------------------------
    def decide(self, message, conversation):
        u = self.understanding()
        return self._live(self._decide(message, conversation, u), u.kb)

    @staticmethod
    def _live(decision, kb):
        """The decision as sent now: `{{variables}}` filled in, the current promotion's line after an
        answer it is for, and outside service hours an escalation that says when people answer."""
        if decision.action == Action.ESCALATE:
            return dataclasses.replace(decision, text=kb.escalation_text())
        if not decision.text:
            return decision
        text = kb.render(decision.text)
        if decision.source in ("knowledge", "generated"):
            for intent_id in decision.answered or (decision.intent,):
                promoted = kb.answer(text, intent_id)
                if promoted != text:
                    text = promoted
                    break
        return dataclasses.replace(decision, text=text) if text != decision.text else decision

    def _decide(self, message, conversation, u):
        kb = u.kb
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
        decision = self._decide_text(text, conversation, u)
        self._remember(conversation, text, decision)
        return decision

    def _decide_text(self, text, conversation, u):
        kb = u.kb
        pick = _PICK.match(text)
        if pick and conversation.pending:
            index = _PICK_WORDS[pick.group(1)]
            if index < len(conversation.pending):
                intent = kb.intent(conversation.pending[index])
                if intent:
                    return Decision(Action.REPLY, intent.answer, source="knowledge", intent=intent.id,
                                    confidence=1.0, reason="suggestion_picked", answered=(intent.id,))
        esc = escalation_mod.detect(text, kb.escalation_keywords, conversation.turns)
        reading = None
        if esc is not None and esc.reason in escalation_mod.VETOABLE and self.reader is not None \
                and u.scorer is not None:
            reading = u.scorer.read(text)
            if self.reader.calm(reading):  # a cue word in a calm message: "差评是不可能差评的"
                esc = escalation_mod.detect(text, kb.escalation_keywords, conversation.turns,
                                            skip=escalation_mod.VETOABLE)
        if esc is None and self._repeated(text, conversation):
            esc = escalation_mod.Escalation("repeated_failure", escalation_mod.PRIORITY["repeated_failure"], "repeat")
        if esc is None and self.reader is not None and u.scorer is not None and not escalation_mod.defused(text) \
                and not self._known_question(text, u):
            reading = reading if reading is not None else u.scorer.read(text)
            esc = self.reader.detect(reading)  # what no cue word says: "叫他也没反应"
        if esc is not None:
            return Decision(Action.ESCALATE, kb.escalation_reply, source="escalate", reason=esc.reason,
                            priority=esc.priority)
        return self._understand(text, conversation, u, reading)

    @staticmethod
    def _known_question(text, u):
        """One question word matching is sure of ("我的快递到哪了" in a shop): answered with no model
        call at all. The escalation rules have read it; the model's reading, which finds escalations
        no rule word names, is spent on messages that are not plainly a question the shop lists."""
        parts = segment.clauses(text)
        return len(parts) == 1 and u.lexically_sure(parts[0])

    def _understand(self, text, conversation, u, reading=None):
        """`reading`: the model's reading of the whole message, which proposes candidate intents for a
        message of one question."""
        parts = segment.clauses(text)
        if not parts:
            return self._politeness(text, u)
        if len(parts) >= 2:
            decision = self._two_questions(parts, u)
            if decision is not None:
                return decision
        question = " ".join(parts)
        ranked = self._read_in_context(question, conversation, u, reading)
        return self._gate(question, ranked, u)

    def _gate(self, text, ranked, u):
        kb = u.kb
        top = ranked[0]
        runner = ranked[1].intent_id if len(ranked) > 1 else None
        if top.confidence >= ANSWER_AT:
            return self._answer(text, kb.intent(top.intent_id), top.confidence, runner, kb)
        if top.confidence >= SUGGEST_AT:
            options = [top] + [r for r in ranked[1:3] if r.confidence >= OPTION_AT]
            return self._suggest(options, kb, top, runner)
        return Decision(Action.REPLY, kb.fallback, source="fallback", intent=None,
                        confidence=top.confidence, runner_up=top.intent_id)

    @staticmethod
    def _suggest(options, kb, top, runner, lead="您是想问：", answered=()):
        lines = [f"{i + 1}. {kb.intent(r.intent_id).title}" for i, r in enumerate(options)]
        reply = lead + "\n" + "\n".join(lines) + "\n回复数字即可。"
        return Decision(Action.REPLY, reply, source="suggest", intent=top.intent_id, confidence=top.confidence,
                        runner_up=runner, suggestions=tuple(r.intent_id for r in options), answered=answered)

    def _politeness(self, text, u):
        """Only a greeting, thanks or "ok": the shop's own intent for it when it has one, else a short
        courtesy of our own. No model: there is no question to understand."""
        ranked = u.lexical.rank(text)
        if ranked and ranked[0].confidence >= ANSWER_AT:
            return self._answer(text, u.kb.intent(ranked[0].intent_id), ranked[0].confidence, None, u.kb)
        if _THANKS.search(text):
            return Decision(Action.REPLY, u.kb.thanks, source="canned")
        return Decision(Action.REPLY, u.kb.welcome, source="welcome")

    def _two_questions(self, parts, u):
        """Each question read on its own: two confident different intents are both answered; one
        confident answer is given with the other question's best guesses offered as suggestions."""
        kb = u.kb
        readings = [u.read(p).ranked for p in parts[:3]]
        sure, unsure = [], []
        for ranked in readings:
            (sure if ranked[0].confidence >= ANSWER_AT else unsure).append(ranked)
        ids = list(dict.fromkeys(r[0].intent_id for r in sure))
        if len(ids) >= 2:
            answers = [kb.intent(i).answer for i in ids[:3]]
            reply = "\n".join(f"{n + 1}. {a}" for n, a in enumerate(answers))
            return Decision(Action.REPLY, reply, source="knowledge", intent=ids[0], answered=tuple(ids[:3]),
                            confidence=min(r[0].confidence for r in sure))
        if len(ids) == 1 and unsure:
            main = kb.intent(ids[0])
            options = [r for r in unsure[0][:3] if r.confidence >= OPTION_AT and r.intent_id != ids[0]]
            if options:
                d = self._suggest(options, kb, sure[0][0], None, lead=f"{main.answer}\n\n另一个问题，您是想问：",
                                  answered=(ids[0],))
                return Decision(Action.REPLY, d.text, source="knowledge", intent=ids[0], answered=(ids[0],),
                                confidence=sure[0][0].confidence, suggestions=d.suggestions)
        if not ids:
            # Neither is sure: each question's best guess, numbered, so both topics are on offer.
            tops = list({r[0].intent_id: r[0] for r in readings if r[0].confidence >= SUGGEST_AT}.values())
            if len(tops) >= 2:
                return self._suggest(tops[:3], kb, tops[0], tops[1].intent_id)
        return None

    def _read_in_context(self, text, conversation, u, reading=None):
        """A short follow-up leans on the previous question. One that switches topic ("那早餐呢",
        "还有停车呢") is read on its own; one that asks about the same thing ("收费吗", "要多久") is read
        together with the previous question, unless it is unmistakably about something else."""
        own = u.read(text, reading=reading).ranked
        prev = conversation.last("user")
        if not prev or not segment.looks_like_follow_up(text):
            return own
        if segment.switches_topic(text) and own[0].confidence >= SUGGEST_AT:
            return own
        if own[0].confidence >= SURE:
            return own
        combined = u.read(segment.strip_politeness(prev["text"]) + "，" + text).ranked
        return combined if combined[0].confidence >= SUGGEST_AT or combined[0].confidence >= own[0].confidence else own

    def _answer(self, text, intent, confidence, runner, kb):
        if self.generator is not None:
            try:
                out = self.generator.phrase(text, kb.render(intent.answer), kb.persona)
            except Exception:  # the approved answer goes out whatever the model does
                log.exception("generation failed; sending the approved answer")
                out = None
            if out is not None and out.text:
                return Decision(Action.REPLY, out.text, source="generated", intent=intent.id,
                                confidence=confidence, runner_up=runner, answered=(intent.id,))
            elif out is not None:
                log.debug("generation rejected (%s); sending the approved answer", out.reason)
        return Decision(Action.REPLY, intent.answer, source="knowledge", intent=intent.id,
                        confidence=confidence, runner_up=runner, answered=(intent.id,))

    @staticmethod
    def _repeated(text, conversation):
        """The customer asks again what the bot just answered: the answer did not help."""
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


def build_engine(knowledge_dir, model_path=None, model_scoring=True, generation=False, budget_seconds=0.8,
                 generation_budget=1.5, max_reply_chars=50, n_threads=2, background_reload=False, snapshot=None,
                 model_escalation=True, gpu_layers=0):
    """The dialogue engine over a knowledge folder, as the worker and every CLI command build it.
    The model is loaded (once per process) when it scores intents or rephrases answers."""
    from .knowledge import KnowledgeStore
    store = KnowledgeStore(knowledge_dir, snapshot=snapshot)
    llm = generator = None
    if model_path and (model_scoring or generation):
        from . import model
        llm = model.load(model_path, n_threads=n_threads, gpu_layers=gpu_layers)
    if generation and llm is not None:
        from .generator import Generator
        generator = Generator(llm, budget_seconds=generation_budget, max_chars=max_reply_chars)
    return DialogueEngine(store, generator, llm=llm if model_scoring else None, budget_seconds=budget_seconds,
                          background_reload=background_reload, read_escalation=model_escalation).warm_up()


def engine_from_config(cfg, knowledge=None, generation=None, model_scoring=None, worker=False):
    """The dialogue engine as configured: the one way the worker and every CLI command build it.
    `worker`: reload edited files on a background thread and start from the last good version of
    a broken knowledge base (kept under var/). The CLI may override the folder and switches."""
    return build_engine(knowledge or cfg.knowledge_dir, cfg.model_path,
                        model_scoring=cfg.model_scoring if model_scoring is None else model_scoring,
                        generation=cfg.generation if generation is None else generation,
                        model_escalation=cfg.model_escalation, budget_seconds=cfg.understanding_budget,
                        generation_budget=cfg.generation_budget, max_reply_chars=cfg.max_reply_chars,
                        background_reload=worker, gpu_layers=cfg.model_gpu_layers,
                        snapshot=cfg.var_path / "knowledge-last-good.json" if worker else None)

