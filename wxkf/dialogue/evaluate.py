"""`wxkf eval`: accuracy, per-intent precision/recall and a confusion matrix for a labelled case file.

Case files are TSV: `expected<TAB>text` per line, `#` comments; expected is an intent id or `none`
(the bot should not claim an answer: fallback or suggestions are right).
"""
from collections import Counter, defaultdict


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


def evaluate(cases, predict):
    """predict(text) -> (top1 intent id, answered intent id or None). Returns a report dict."""
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
