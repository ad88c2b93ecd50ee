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

DEV = ROOT / "tests" / "eval" / "trades"


def score_trade(trade, cache, llm, max_candidates):
    from wxkf.dialogue.engine import build_scorer
    path = cache / f"{trade}.json"
    if path.exists():
        return json.loads(path.read_text())
    kb = load(DEV / trade / "knowledge")
    clf = IntentClassifier(kb)
    scorer = build_scorer(kb, llm)
    out = []
    for label, text in read_cases(DEV / trade / "cases.tsv"):
        if ":" in label:
            continue
        lex = clf.rank(text)
        cands = [r.intent_id for r in lex[:max_candidates]]
        s = scorer.score(text, cands + [NEUTRAL])
        out.append({"label": label, "text": text, "scores": {k: v[0] for k, v in s.items()}, "n": s[NEUTRAL][1]})
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


def fit(X, y, steps=4000, lr=0.1, l2=1e-3):
    theta = np.zeros(X.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-X @ theta))
        theta -= lr * (X.T @ (p - y) / len(y) + l2 * theta)
    return theta


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
    X, y = [], []
    for r in rows:
        for k in (cal.first_candidates, cal.max_candidates):
            top, f = features(r, k, w)
            X.append(f)
            y.append(float(top == r["label"]))
    X, y = np.array(X), np.array(y)
    theta = fit(X, y)
    print("fitted: bias=%.3f margin=%.3f pmi=%.3f lexical=%.3f" % tuple(theta))
    print(f"{len(rows)} cases from {', '.join(trades)}")
    # The lexical fast path: precision of the lexical top-1 at each confidence.
    for th in (0.6, 0.7, 0.8, 0.9, 0.95):
        sure = [r for r in rows if r["lconf"] >= th]
        right = sum(r["order"][0] == r["label"] for r in sure)
        print(f"lexical_sure={th}: {len(sure)} cases ({len(sure) / len(rows):.0%}) skip the model, "
              f"precision {right / max(1, len(sure)):.3f}")
    # Answer thresholds on the two-pass pipeline.
    for th in (0.5, 0.6, 0.7, 0.8, 0.9):
        right = wrong = oos = ins = nones = 0
        for r in rows:
            top, f = features(r, cal.first_candidates, w)
            conf = 1 / (1 + np.exp(-f @ theta))
            if conf < cal.widen_below:
                top, f = features(r, cal.max_candidates, w)
                conf = 1 / (1 + np.exp(-f @ theta))
            if r["label"] == "none":
                nones += 1
                oos += conf >= th
            else:
                ins += 1
                right += conf >= th and top == r["label"]
                wrong += conf >= th and top != r["label"]
        print(f"answer_at={th}: right {right / ins:.3f}, wrong {wrong / ins:.3f}, "
              f"out-of-scope answered {oos / max(1, nones):.3f}")


if __name__ == "__main__":
    main()
