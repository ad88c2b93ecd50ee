"""What does the customer ask? Lexical recall, the model where it changes the answer, calibrated confidence.

1. The lexical classifier (`intent.py`: jieba words, character bigrams, 词林 thesaurus groups, the shop's
   synonyms; < 1 ms) ranks every intent. When it is sure (confidence >= `lexical_sure`), that is the
   reading: no model call.
2. Otherwise the model scores the lexical top `first_candidates` intents and the trade-wide neutral
   prompt (`scorer.py`); when the model has read the message for escalation, the candidates are the
   lexical top 2 and the 2 intents whose examples read most like it. (Scoring more candidates when still unsure is supported, `max_candidates`,
   and off: it bought nothing measurable.)
3. Each scored candidate gets z = log P(message | intent) / tokens + `lexical_weight` x lexical score.
   The confidence of the best one is a logistic function of three measured signals: its margin over the
   runner-up, how much better it explains the message than the trade-wide prompt (pointwise mutual
   information per token; low for out-of-scope questions), and its lexical score. Below a PMI floor
   the reading can only be suggested; with no word in common with the chosen intent it falls back.
   The coefficients were fitted on the development trades only (tests/eval/trades;
   `bench/fit_confidence.py`), never on the blind ones.

Confidence means "probability that this intent is what the customer asked"; the engine answers,
suggests or falls back on it. Anything that fails in the model stage falls back to the lexical reading.
"""
import dataclasses
import logging
import math
import time

from . import segment
from .intent import IntentClassifier, Ranked, _sigmoid
from .scorer import NEUTRAL

log = logging.getLogger("wxkf.understand")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Fitted on tests/eval/trades (development trades) by bench/fit_confidence.py."""
    lexical_weight: float = 1.0
    bias: float = -1.192
    margin: float = 1.685
    pmi: float = 1.193
    lexical: float = 2.032
    lexical_sure: float = 0.95
    """Lexical confidence at which the model is not asked (127 of 1,050 development cases, all right)."""
    first_candidates: int = 3
    max_candidates: int = 3
    """Candidates scored when the first pass is unsure (widening). Measured on the development trades:
    scoring up to 8 added 0.002 of right answers for about twice the model time, so it is off."""
    lexical_with_reading: int = 2
    reading_candidates: int = 2
    """With the model's reading of the message (taken for escalation), the candidates are the lexical
    top `lexical_with_reading` and the reading's nearest `reading_candidates` intents (3.15 scored on
    average, against 3): measured on the development trades (bench/sim_reading_candidates.py), top-1
    0.683 -> 0.726 and the expected intent among the top 3 0.759 -> 0.823, at the same answer rate."""
    reading_evidence: float = 0.1
    """Cosine at which the reading's agreement counts as evidence for a chosen intent that shares no
    word with the message (instead of `lexical_floor`'s fallback), when the scoring also finds the
    message in scope (PMI >= `pmi_floor`). Simulated on the development trades (bench/sim_evidence.py,
    against word-only evidence): right answer or right suggestion 0.715 -> 0.762, out-of-scope
    questions offered a suggestion 0.544 -> 0.561; answered right (0.351), wrong answers (0.018) and
    out-of-scope answered (0.096) unchanged. Without the PMI condition: 0.783, but chit-chat such as
    "今天天气怎么样" was offered intents (0.596)."""
    widen_below: float = 0.6
    """Confidence under which the second pass scores more candidates."""
    pmi_floor: float = 0.3
    """Per-token gain over the trade-wide prompt under which a reading is capped at suggestion level:
    the best intent explains the message no better than the shop's questions in general do."""
    lexical_floor: float = 0.01
    """Lexical score of the chosen intent under which a reading is capped at `no_evidence_cap` (the
    fallback) unless the model's reading agrees (`reading_evidence`): the model's scoring alone, on a
    few tokens, can fancy "今天天气怎么样" is about delivery; an answer or a suggestion needs a word in
    common or a second, independent reading (costs 0.006 of right answers on the development trades)."""
    no_evidence_cap: float = 0.15
    """Highest confidence when the chosen intent shares no word with the message: below the engine's
    suggestion threshold, since the candidates themselves were then picked on no evidence."""
    out_of_scope_cap: float = 0.5
    """Highest confidence a reading under the floor keeps (below the engine's answer threshold)."""


CALIBRATION = Calibration()


@dataclasses.dataclass(frozen=True)
class Reading:
    ranked: list            # Ranked, best first; confidence calibrated
    used_model: bool = False
    candidates: int = 0     # intents the model scored
    ms: float = 0.0


class Understanding:
    """One per knowledge base: the lexical classifier and, optionally, the model scorer built over it."""

    def __init__(self, kb, scorer=None, calibration=CALIBRATION, budget_seconds=0.8, clock=time.monotonic):
        self.kb = kb
        self.lexical = IntentClassifier(kb)
        self.scorer = scorer
        # Intents for greetings and thanks (most examples are nothing but politeness): small talk such
        # as "今天天气怎么样" reads like them, so the reading's agreement is no evidence for them.
        self.courtesy = {i.id for i in kb.intents
                         if 2 * sum(not segment.clauses(e) for e in i.examples) > len(i.examples)}
        self.cal = calibration
        self.budget = budget_seconds
        self.clock = clock

    def lexically_sure(self, text):
        """Word matching alone is sure what `text` asks (no model call is needed to answer it)."""
        lex = self.lexical.rank(text)
        return bool(lex) and lex[0].confidence >= self.cal.lexical_sure

    def read(self, text, reading=None):
        """The ranked intents for `text`; `reading` (ModelScorer.read of it) proposes candidates too."""
        started = self.clock()
        lex = self.lexical.rank(text)
        if self.scorer is None or not lex or lex[0].confidence >= self.cal.lexical_sure:
            return Reading(lex, ms=(self.clock() - started) * 1000)
        try:
            ranked, n = self._with_model(text, lex, started, reading)
        except Exception:  # the decision never dies because of the model
            log.exception("model scoring failed; using the lexical reading")
            return Reading(lex, ms=(self.clock() - started) * 1000)
        return Reading(ranked, used_model=True, candidates=n, ms=(self.clock() - started) * 1000)

    def _with_model(self, text, lex, started, reading=None):
        cal = self.cal
        lexical = {r.intent_id: r.score for r in lex}
        order = [r.intent_id for r in lex]
        first = order[:cal.first_candidates]
        near = self.scorer.nearest(reading, cal.reading_candidates) if reading is not None else []
        if near:
            first = list(dict.fromkeys(order[:cal.lexical_with_reading] + [i for i, _ in near]))
        agree = {i for i, cos in near if cos >= cal.reading_evidence and i not in self.courtesy}
        scores = self.scorer.score(text, first + [NEUTRAL])
        ranked, conf = self._combine(scores, lexical, agree)
        elapsed = self.clock() - started
        more = order[cal.first_candidates:cal.max_candidates]
        if conf < cal.widen_below and more and elapsed * (1 + len(more) / cal.first_candidates) < self.budget:
            scores.update(self.scorer.score(text, more))
            ranked, conf = self._combine(scores, lexical, agree)
        scored = {r.intent_id for r in ranked}
        rest = [Ranked(r.intent_id, r.score, 0.0) for r in lex if r.intent_id not in scored]
        return ranked + rest, len(scored)

    def _combine(self, scores, lexical, agree=frozenset()):
        """`agree`: intents the model's reading of the message also found (evidence besides a word)."""
        cal = self.cal
        neutral, n = scores.get(NEUTRAL, (0.0, 1))
        n = max(1, n)
        z = {k: lp / n + cal.lexical_weight * lexical.get(k, 0.0) for k, (lp, _) in scores.items() if k != NEUTRAL}
        best = sorted(z, key=lambda k: -z[k])
        top = best[0]
        margin = z[top] - z[best[1]] if len(best) > 1 else 1.0
        pmi = (scores[top][0] - neutral) / n
        conf = _sigmoid(cal.bias + cal.margin * margin + cal.pmi * pmi + cal.lexical * lexical.get(top, 0.0))
        if lexical.get(top, 0.0) < cal.lexical_floor and not (top in agree and pmi >= cal.pmi_floor):
            conf = min(conf, cal.no_evidence_cap)
        elif pmi < cal.pmi_floor:
            conf = min(conf, cal.out_of_scope_cap)
        # The others share what is left in proportion to how close they came.
        rest = [math.exp(z[k] - z[top]) for k in best[1:]]
        total = sum(rest) or 1.0
        ranked = [Ranked(top, round(z[top], 4), round(conf, 4))]
        ranked += [Ranked(k, round(z[k], 4), round(min(conf, (1 - conf) * w / total), 4))
                   for k, w in zip(best[1:], rest)]
        return ranked, conf
