"""Fit the lexical classifier's confidence on the DEVELOPMENT trades (tests/eval/trades) only.

    .venv/bin/python bench/fit_lexical.py

The confidence of the top intent is sigmoid(bias + top x best score + margin x (best - second)
+ example x similarity to its closest example);
"right" means the top intent is the expected one, out-of-scope cases are never right. Prints the
coefficients for `wxkf/dialogue/intent.py` and the precision of the fast path at each threshold.
The blind trades (tests/eval/blind) are never read here.
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wxkf.dialogue.evaluate import read_cases  # noqa: E402
from wxkf.dialogue.intent import IntentClassifier  # noqa: E402
from wxkf.dialogue.knowledge import load  # noqa: E402

DEV = ROOT / "tests" / "eval" / "trades"


def fit(X, y, steps=6000, lr=0.5, l2=1e-4):
    theta = np.zeros(X.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-X @ theta))
        theta -= lr * (X.T @ (p - y) / len(y) + l2 * theta)
    return theta


def main():
    X, y, where = [], [], []
    for trade in sorted(p for p in DEV.iterdir() if (p / "cases.tsv").exists()):
        clf = IntentClassifier(load(trade / "knowledge"))
        for label, text in read_cases(trade / "cases.tsv"):
            if ":" in label:
                continue
            r = clf.rank(text)
            X.append([1.0, r[0].score, r[0].score - r[1].score, r[0].example])
            y.append(float(r[0].intent_id == label))
            where.append(trade.name)
    X, y = np.array(X), np.array(y)
    theta = fit(X, y)
    print("fitted: bias=%.3f top=%.3f margin=%.3f example=%.3f" % tuple(theta))
    p = 1 / (1 + np.exp(-X @ theta))
    for th in (0.5, 0.6, 0.7, 0.8, 0.9):
        sel = p >= th
        print(f"confidence >= {th}: {sel.mean():.1%} of cases, precision {y[sel].mean() if sel.any() else 0:.3f}")


if __name__ == "__main__":
    main()
