"""Fit the understanding stage's calibration on the DEVELOPMENT trades (tests/eval/trades) only.

    .venv/bin/python bench/fit_confidence.py [--cache var/fit-cache] [trade ...]

1. Scores every in-scope and out-of-scope case of each trade against its lexical top `max_candidates`
   intents and the neutral prompt with the real model (cached as JSON: ~5 minutes a trade on 2 cores).
2. Simulates `Understanding` (first pass over the lexical top 3, second pass up to 8) and fits the
   logistic confidence (bias, margin, PMI, lexical) by gradient descent on log-loss, where "right"
   means the top intent is the expected one (out-of-scope cases are never right).
3. Prints the coefficients to paste into `wxkf/dialogue/understand.py`, the lexical fast path's
   precision at several thresholds, and the answer/suggest thresholds' effect.

The blind trades (tests/eval/blind) are never read here.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wxkf.dialogue.evaluate import read_cases  # noqa: E402
from wxkf.dialogue.intent import IntentClassifier  # noqa: E402
from wxkf.dialogue.knowledge import load  # noqa: E402
from wxkf.dialogue.scorer import NEUTRAL  # noqa: E402
from wxkf.dialogue.understand import CALIBRATION  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_lexical import fit  # noqa: E402  (logistic regression by gradient descent)

DEV = ROOT / "tests" / "eval" / "trades"
NEUTRAL_VERSION = 2
"""Bumped when the neutral prompt changes, so cached cases rescore just that prompt."""

MAX_CASES = 200
"""Cases scored per trade at most (evenly spaced), so the demo shop's 470 do not outweigh the others."""


def score_trade(trade, cache, llm, max_candidates):
    from wxkf.dialogue.engine import build_scorer
    path = cache / f"{trade}.json"
    kb = load(DEV / trade / "knowledge")
    if path.exists():
        out = json.loads(path.read_text())
        stale = [r for r in out if r.get("neutral") != NEUTRAL_VERSION]
        if stale:  # the neutral prompt changed: rescore it alone (one sequence per case)
            scorer = build_scorer(kb, llm)
            for r in stale:
                r["scores"][NEUTRAL] = scorer.score(r["text"], [NEUTRAL])[NEUTRAL][0]
                r["neutral"] = NEUTRAL_VERSION
            scorer.close()
            path.write_text(json.dumps(out, ensure_ascii=False))
        return out
    clf = IntentClassifier(kb)
    scorer = build_scorer(kb, llm)
    out = []
    rows = [(label, text) for label, text in read_cases(DEV / trade / "cases.tsv") if ":" not in label]
    for label, text in rows[::max(1, len(rows) // MAX_CASES)]:
        lex = clf.rank(text)
        cands = [r.intent_id for r in lex[:max_candidates]]
        s = scorer.score(text, cands + [NEUTRAL])
        out.append({"label": label, "text": text, "scores": {k: v[0] for k, v in s.items()}, "n": s[NEUTRAL][1],
                    "neutral": NEUTRAL_VERSION})
    scorer.close()
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, ensure_ascii=False))
    return out


def features(row, k, w):
    cands = [c for c in row["order"][:k] if c in row["scores"]]
    n = max(1, row["n"])
    z = {c: row["scores"][c] / n + w * row["lex"][c] for c in cands}
    best = sorted(z, key=lambda c: -z[c])
    top = best[0]
    margin = z[top] - z[best[1]] if len(best) > 1 else 1.0
    pmi = (row["scores"][top] - row["scores"][NEUTRAL]) / n
    return top, np.array([1.0, margin, pmi, row["lex"][top]])


def training_set(rows, feats):
    """The calibration's training data: each case's best candidate at both passes (first and
    widened), its features, and whether it is the expected intent. `feats(row, k)` as in
    answer_counts."""
    X, y = [], []
    for r in rows:
        for k in (CALIBRATION.first_candidates, CALIBRATION.max_candidates):
            top, f = feats(r, k)
            X.append(f)
            y.append(float(top == r["label"]))
    return np.array(X), np.array(y)


def answer_counts(rows, theta, feats, threshold, pmi_floor):
    """What the two-pass pipeline does at an answer threshold: (right answers, wrong answers,
    out-of-scope questions answered, in-scope cases, out-of-scope cases). `feats(row, k)` gives the
    best of k candidates and its calibration features (margin, PMI, lexical, ...)."""
    cal = CALIBRATION
    right = wrong = oos = ins = nones = 0
    for r in rows:
        top, f = feats(r, cal.first_candidates)
        conf = 1 / (1 + np.exp(-f @ theta))
        if conf < cal.widen_below:
            top, f = feats(r, cal.max_candidates)
            conf = 1 / (1 + np.exp(-f @ theta))
        if f[2] < pmi_floor or f[3] < cal.lexical_floor:
            conf = min(conf, cal.out_of_scope_cap)
        answered = conf >= threshold
        if r["label"] == "none":
            nones += 1
            oos += answered
        else:
            ins += 1
            right += answered and top == r["label"]
            wrong += answered and top != r["label"]
    return right, wrong, oos, ins, nones


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=str(ROOT / "var" / "fit-cache"))
    ap.add_argument("--model", default=None)
    ap.add_argument("trades", nargs="*")
    args = ap.parse_args()
    trades = args.trades or sorted(p.name for p in DEV.iterdir() if (p / "cases.tsv").exists())
    from wxkf import config as config_mod
    from wxkf.dialogue import model as model_mod
    llm = model_mod.load(args.model or config_mod.load().model_path)
    cal = CALIBRATION
    rows = []
    for t in trades:
        clf = IntentClassifier(load(DEV / t / "knowledge"))
        for r in score_trade(t, Path(args.cache), llm, cal.max_candidates):
            lex = clf.rank(r["text"])  # recomputed: the lexical stage may have changed since caching
            r.update(trade=t, lex={x.intent_id: x.score for x in lex}, lconf=lex[0].confidence,
                     order=[x.intent_id for x in lex])
            rows.append(r)
    w = cal.lexical_weight
    X, y = training_set(rows, lambda r, k: features(r, k, w))
    theta = fit(X, y, steps=4000, lr=0.1, l2=1e-3)
    print("fitted: bias=%.3f margin=%.3f pmi=%.3f lexical=%.3f" % tuple(theta))
    print(f"{len(rows)} cases from {', '.join(trades)}")
    # The lexical fast path: precision of the lexical top-1 at each confidence.
    for th in (0.6, 0.7, 0.8, 0.9, 0.95):
        sure = [r for r in rows if r["lconf"] >= th]
        right = sum(r["order"][0] == r["label"] for r in sure)
        print(f"lexical_sure={th}: {len(sure)} cases ({len(sure) / len(rows):.0%}) skip the model, "
              f"precision {right / max(1, len(sure)):.3f}")
    # Answer threshold x in-scope floor on PMI, on the two-pass pipeline.
    print("answer_at pmi_floor: right wrong oos-answered (targets: wrong <= 0.03, oos <= 0.10)")
    best = None
    for floor in (-9, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
        for th in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8):
            right, wrong, oos, ins, nones = answer_counts(rows, theta, lambda r, k: features(r, k, w), th, floor)
            figs = (right / ins, wrong / ins, oos / max(1, nones))
            ok = figs[1] <= 0.03 and figs[2] <= 0.10
            if ok and (best is None or figs[0] > best[2][0]):
                best = (th, floor, figs)
            print(f"{th:5.2f} {floor:5.1f}: {figs[0]:.3f} {figs[1]:.3f} {figs[2]:.3f}{'  meets both' if ok else ''}")
    print("best meeting both targets:", best)


if __name__ == "__main__":
    main()
