"""`wxkf eval`: how well the bot answers a labelled set of customer messages.

Case files are TSV, `label<TAB>message` per line, `#` comments. Labels:
- `<intent id>`: an in-scope question; right when the bot answers it directly with that intent;
- `none`: out of scope; the bot must not answer it directly (fallback or suggestions are right);
- `escalate:<reason>` (or `escalate`): a human is needed;
- `calm:<intent id or none>`: a look-alike of an escalation that must not escalate;
- `multi:<id1>+<id2>`: two questions in one message; right when both are answered, half right when
  the main one is answered and the other offered;
- `follow:<id>`: `first message || follow-up`; right when the follow-up is answered with <id>.

`evaluate_engine` runs every case through the whole dialogue engine, each in a fresh conversation, so
greetings, two-part questions, follow-ups and escalation are measured as customers meet them.
A folder of trades (`<trade>/knowledge/*.yaml` + `<trade>/cases.tsv`) gives one report per trade.
"""
import dataclasses
import time
from collections import Counter, defaultdict
from pathlib import Path

from .decision import Action, Conversation, Message

REASONS = ("request", "complaint", "urgent", "anger")


def read_cases(path):
    cases = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            if "\t" not in line:
                raise ValueError(f"{path}:{n}: expected 'label<TAB>text'")
            label, text = line.split("\t", 1)
            cases.append((label.strip(), text))
    return cases


def check_labels(cases, intent_ids, where="cases"):
    """Raise ValueError naming every label that refers to an unknown intent or kind."""
    bad = []
    for label, text in cases:
        kind, _, arg = label.partition(":")
        ids = []
        if kind in ("escalate",):
            if arg and arg not in REASONS:
                bad.append(label)
            continue
        if kind == "calm":
            ids = [arg] if arg != "none" else []
        elif kind == "multi":
            ids = arg.split("+")
        elif kind == "follow":
            ids = [arg]
            if "||" not in text:
                bad.append(f"{label} (no '||' in {text!r})")
        elif kind == "none":
            ids = []
        else:
            ids = [label]
        bad += [i for i in ids if i not in intent_ids]
    if bad:
        raise ValueError(f"{where}: unknown labels: {', '.join(sorted(set(bad)))}")


def evaluate(cases, predict):
    """Classifier-only report. predict(text) -> (top1 intent id, answered intent id or None).
    Only intent and `none` labels are used."""
    cases = [(label, text) for label, text in cases if ":" not in label]
    top1_hits = answered_hits = answered = wrong_answers = in_scope = 0
    confusion = defaultdict(Counter)
    misses = []
    for label, text in cases:
        top1, answer = predict(text)
        if label != "none":
            in_scope += 1
            top1_hits += top1 == label
            if answer is not None:
                answered += 1
                answered_hits += answer == label
                wrong_answers += answer != label
        else:
            wrong_answers += answer is not None
        confusion[label][top1 if label != "none" else (answer or "none")] += 1
        if (label != "none" and top1 != label) or (label == "none" and answer is not None):
            misses.append((label, top1, answer, text))
    labels = sorted(set(confusion) | {p for row in confusion.values() for p in row})
    per_intent = {}
    for label in labels:
        tp = confusion[label][label]
        predicted = sum(confusion[l][label] for l in confusion)
        actual = sum(confusion[label].values())
        per_intent[label] = {"precision": tp / predicted if predicted else 0.0,
                             "recall": tp / actual if actual else 0.0, "n": actual}
    return {
        "cases": len(cases),
        "top1_accuracy": top1_hits / in_scope if in_scope else 0.0,
        "answered_share": answered / in_scope if in_scope else 0.0,
        "answered_precision": answered_hits / answered if answered else 0.0,
        "wrong_answers": wrong_answers,
        "per_intent": per_intent,
        "confusion": {k: dict(v) for k, v in confusion.items()},
        "labels": labels,
        "misses": misses,
    }


def format_report(report, show_misses=True):
    lines = [f"cases: {report['cases']}",
             f"top-1 accuracy (in-scope): {report['top1_accuracy']:.3f}",
             f"answered directly: {report['answered_share']:.3f} of in-scope, "
             f"precision {report['answered_precision']:.3f}; wrong direct answers: {report['wrong_answers']}",
             "", f"{'intent':16s} {'prec':>6s} {'recall':>6s} {'n':>4s}"]
    for label, m in report["per_intent"].items():
        lines.append(f"{label:16s} {m['precision']:6.2f} {m['recall']:6.2f} {m['n']:4d}")
    labels = report["labels"]
    short = [l[:6] for l in labels]
    lines += ["", "confusion (rows: expected, columns: predicted top-1)", " " * 16 + " ".join(f"{s:>6s}" for s in short)]
    for label in labels:
        row = report["confusion"].get(label, {})
        lines.append(f"{label:16s} " + " ".join(f"{row.get(p, 0) or '.':>6}" for p in labels))
    if show_misses and report["misses"]:
        lines += ["", "misses (expected -> top-1 / answered): text"]
        lines += [f"  {e} -> {t} / {a}: {x}" for e, t, a, x in report["misses"]]
    return "\n".join(lines)


# -- whole-engine evaluation ------------------------------------------------------------------------

def _answered(decision):
    """The intents whose approved answers the reply carries."""
    if decision.action != Action.REPLY or decision.source not in ("knowledge", "generated"):
        return ()
    return decision.answered or ((decision.intent,) if decision.intent else ())


@dataclasses.dataclass
class TradeReport:
    name: str
    counts: Counter = dataclasses.field(default_factory=Counter)
    misses: list = dataclasses.field(default_factory=list)
    ms: list = dataclasses.field(default_factory=list)
    sources: Counter = dataclasses.field(default_factory=Counter)
    measured_top1: bool = False

    def rate(self, hit, total):
        n = self.counts[total]
        return self.counts[hit] / n if n else None

    def figures(self):
        return {
            "in_scope": self.counts["in"],
            "answered_right": self.rate("in_right", "in"),
            "wrong_answer": self.rate("in_wrong", "in"),
            "suggest_or_fallback": self.rate("in_soft", "in"),
            "right_or_offered": self.rate("in_offered", "in"),
            "top1": self.rate("in_top1", "in") if self.measured_top1 else None,
            "out_of_scope": self.counts["oos"],
            "oos_answered": self.rate("oos_answered", "oos"),
            "escalations": self.counts["esc"],
            "escalation_recall": self.rate("esc_caught", "esc"),
            "lookalikes": self.counts["calm"],
            "lookalikes_escalated": self.rate("calm_escalated", "calm"),
            "ordinary_escalated": self.counts["ordinary_escalated"],
            "multi": self.counts["multi"],
            "multi_both": self.rate("multi_both", "multi"),
            "multi_main": self.rate("multi_main", "multi"),
            "follow": self.counts["follow"],
            "follow_right": self.rate("follow_right", "follow"),
        }


def evaluate_engine(name, cases, engine, top1=None):
    """Run every case through `engine.decide` in a fresh conversation; return a TradeReport.
    `top1(text)`, when given, adds the classifier's top-1 accuracy."""
    rep = TradeReport(name, measured_top1=top1 is not None)
    for label, text in cases:
        kind, _, arg = label.partition(":")
        convo = Conversation("eval")
        turns = [t.strip() for t in text.split("||")] if kind == "follow" else [text]
        started = time.perf_counter()
        for turn in turns:
            d = engine.decide(Message(kind="text", text=turn), convo)
        rep.ms.append((time.perf_counter() - started) * 1000 / len(turns))
        rep.sources[d.source] += 1
        answered = _answered(d)
        escalated = d.action == Action.ESCALATE
        ok = True
        if kind == "escalate":
            rep.counts["esc"] += 1
            rep.counts["esc_caught"] += escalated
            ok = escalated
        elif kind == "calm":
            rep.counts["calm"] += 1
            rep.counts["calm_escalated"] += escalated
            ok = not escalated
        elif kind == "none":
            rep.counts["oos"] += 1
            rep.counts["oos_answered"] += bool(answered)
            rep.counts["ordinary_escalated"] += escalated
            ok = not answered and not escalated
        elif kind == "multi":
            ids = arg.split("+")
            rep.counts["multi"] += 1
            both = all(i in answered for i in ids)
            offered = set(answered) | set(d.suggestions)
            main = both or all(i in offered for i in ids)
            rep.counts["multi_both"] += both
            rep.counts["multi_main"] += main or both
            ok = both
        elif kind == "follow":
            rep.counts["follow"] += 1
            right = bool(answered) and answered[0] == arg
            rep.counts["follow_right"] += right
            ok = right
        else:
            rep.counts["in"] += 1
            right = bool(answered) and answered[0] == label
            rep.counts["in_right"] += right
            rep.counts["in_wrong"] += bool(answered) and not right
            rep.counts["in_soft"] += not answered and not escalated
            rep.counts["in_offered"] += right or (not answered and label in d.suggestions)
            rep.counts["ordinary_escalated"] += escalated
            if top1 is not None:
                rep.counts["in_top1"] += top1(text) == label
            ok = right
        if not ok:
            rep.misses.append((label, d.source, "+".join(answered) or d.reason or "", text))
    return rep


def trade_folders(root):
    """Trades under `root`: sub-folders holding `knowledge/` and `cases.tsv` (or `root` itself)."""
    root = Path(root)
    if (root / "cases.tsv").is_file():
        return [root]
    return sorted(p for p in root.iterdir() if (p / "cases.tsv").is_file() and (p / "knowledge").is_dir())


COLUMNS = (("answered_right", "right"), ("wrong_answer", "wrong"), ("suggest_or_fallback", "sugg/fb"),
           ("right_or_offered", "offered"),
           ("top1", "top-1"), ("oos_answered", "oos ans"), ("escalation_recall", "esc rec"),
           ("lookalikes_escalated", "look esc"), ("ordinary_escalated", "ord esc"),
           ("multi_both", "multi"), ("multi_main", "multi+s"), ("follow_right", "follow"))


def format_trades(reports, show_misses=False):
    head = f"{'trade':12s} {'n':>4s} " + " ".join(f"{c:>8s}" for _, c in COLUMNS) + f" {'p50 ms':>7s} {'p95 ms':>7s}"
    lines = [head]
    for rep in reports:
        f = rep.figures()
        cells = []
        for key, _ in COLUMNS:
            v = f[key]
            cells.append(f"{'-':>8s}" if v is None else (f"{v:8d}" if isinstance(v, int) else f"{v:8.3f}"))
        ms = sorted(rep.ms) or [0.0]
        lines.append(f"{rep.name:12s} {f['in_scope']:4d} " + " ".join(cells)
                     + f" {ms[len(ms) // 2]:7.1f} {ms[int(len(ms) * 0.95)]:7.1f}")
    if show_misses:
        for rep in reports:
            if rep.misses:
                lines += ["", f"misses in {rep.name} (expected -> source / answered or reason): text"]
                lines += [f"  {e} -> {s} / {a}: {t}" for e, s, a, t in rep.misses]
    return "\n".join(lines)
