"""Would the model's reading of a message (computed anyway for escalation) help understanding?

Simulated on the cached model scores of bench/fit_confidence.py (development trades only; each case
scored against its lexical top 8 and the trade-wide prompt) and the cached readings of
bench/fit_escalation.py / fit_intent_reader.py. For each variant the confidence is refitted on the
other trades (leave one trade out) and the answer threshold is the one with the most right answers
at wrong <= 3% and out-of-scope answered <= 10% over all trades.

    python bench/sim_reading_candidates.py
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from wxkf.dialogue.intent import IntentClassifier  # noqa: E402
from wxkf.dialogue.knowledge import load  # noqa: E402
from wxkf.dialogue.scorer import NEUTRAL  # noqa: E402
from wxkf.dialogue.understand import CALIBRATION as CAL  # noqa: E402

import fit_intent_reader as fir  # noqa: E402
from fit_lexical import fit  # noqa: E402

DEV = ROOT / "tests" / "eval" / "trades"


def cases_of(trade, reading, protos):
    kb = load(DEV / trade / "knowledge")
    clf = IntentClassifier(kb)
    ids = [i.id for i in kb.intents]
    owner = {}
    for i in kb.intents:
        for t in fir.intent_texts(i):
            owner.setdefault(i.id, []).append(protos[(trade, t)])
    rows = json.loads((ROOT / "var" / "fit-cache" / f"{trade}.json").read_text())
    return kb, clf, ids, owner, rows


def main():
    kbs, reading, protos, standardise, unit = fir.load_readings()

    trades = [p.stem for p in sorted((ROOT / "var" / "fit-cache").glob("*.json"))]
    samples = {}   # variant -> list of (trade, features, right, is_oos)
    missing = 0
    for trade in trades:
        kb, clf, ids, owner, rows = cases_of(trade, reading, protos)
        cent = {i: c / np.linalg.norm(c) for i, c in
                ((i, np.mean([standardise(v) for v in vs], axis=0)) for i, vs in owner.items())}
        for r in rows:
            text = r["text"]
            if (trade, text) not in reading:
                continue
            lex = clf.rank(text)
            lexs = {x.intent_id: x.score for x in lex}
            u = unit(reading[(trade, text)])
            cos = {i: float(u @ cent[i]) for i in ids}
            by_read = sorted(ids, key=lambda i: -cos[i])
            lp = {k: v for k, v in r["scores"].items() if k != NEUTRAL}
            neutral = r["scores"][NEUTRAL]
            n = max(1, r["n"])
            oos = r["label"] == "none"
            for variant, cands in (("lex3", [x.intent_id for x in lex[:3]]),
                                   ("lex3+read2", list(dict.fromkeys([x.intent_id for x in lex[:3]] + by_read[:2]))),
                                   ("lex3+read1", list(dict.fromkeys([x.intent_id for x in lex[:3]] + by_read[:1]))),
                                   ("lex2+read2", list(dict.fromkeys([x.intent_id for x in lex[:2]] + by_read[:2])))):
                for weight in (0.0, 2.0, 4.0):
                    usable = [c for c in cands if c in lp]
                    missing += len(cands) - len(usable)
                    if len(usable) < 1:
                        continue
                    z = {c: lp[c] / n + lexs.get(c, 0.0) + weight * cos[c] for c in usable}
                    best = sorted(z, key=lambda c: -z[c])
                    top = best[0]
                    margin = z[top] - z[best[1]] if len(best) > 1 else 1.0
                    pmi = (lp[top] - neutral) / n
                    feats = [1.0, margin, pmi, lexs.get(top, 0.0), cos[top],
                             cos[top] - max([cos[c] for c in ids if c != top])]
                    samples.setdefault((variant, weight), []).append(
                        (trade, np.array(feats), float(top == r["label"]), oos, lexs.get(top, 0.0), pmi,
                         r["label"] in best[:3], len(cands)))
    print(f"(candidate scores missing from the cache: {missing})")
    for (variant, weight), rows in samples.items():
        for featset, cols in (("margin,pmi,lex", [0, 1, 2, 3]), ("+cos,cosmargin", [0, 1, 2, 3, 4, 5]),
                              ("shipped", [0, 1, 2, 3])):
            probs = np.zeros(len(rows))
            trades_arr = np.array([r[0] for r in rows])
            X = np.stack([r[1][cols] for r in rows])
            y = np.array([r[2] for r in rows])
            oos = np.array([r[3] for r in rows])
            for trade in trades:
                tr = trades_arr != trade
                theta = (np.array([CAL.bias, CAL.margin, CAL.pmi, CAL.lexical]) if featset == "shipped"
                         else fit(X[tr], y[tr], steps=3000))
                probs[~tr] = 1 / (1 + np.exp(-X[~tr] @ theta))
            lexok = np.array([r[4] >= CAL.lexical_floor for r in rows])
            pmiok = np.array([r[5] >= CAL.pmi_floor for r in rows])
            if "--no-floors" in sys.argv:
                lexok[:] = True
                pmiok[:] = True
            if "--oracle-oos" in sys.argv:  # a perfect out-of-scope detector: what would remain
                pmiok = ~oos
            best = None
            for th in ([0.8] if featset == "shipped" else np.arange(0.5, 0.96, 0.025)):
                ans = (probs >= th) & lexok & pmiok
                right = (ans & (y == 1) & ~oos).sum() / (~oos).sum()
                wrong = (ans & (y == 0) & ~oos).sum() / (~oos).sum()
                oosa = (ans & oos).sum() / max(1, oos.sum())
                if wrong <= 0.03 and oosa <= 0.10 and (best is None or right > best[1]):
                    best = (th, right, wrong, oosa)
            if "--frontier" in sys.argv and variant == "lex3" and weight == 0.0:
                for th in np.arange(0.3, 0.96, 0.05):
                    ans = (probs >= th) & lexok & pmiok
                    print(f"   {featset} th {th:.2f} right {(ans & (y == 1) & ~oos).sum() / (~oos).sum():.3f} "
                          f"wrong {(ans & (y == 0) & ~oos).sum() / (~oos).sum():.3f} oos {(ans & oos).sum() / max(1, oos.sum()):.3f}")
            top1 = (y[~oos]).mean()
            in3 = np.mean([r[6] for r in rows if not r[3]])
            ncand = np.mean([r[7] for r in rows])
            print(f"{variant:11} w={weight:<3} {featset:15} top1 {top1:.3f} in-top3 {in3:.3f} cands {ncand:.2f} "
                  + (f"answer at {best[0]:.3f}: right {best[1]:.3f} wrong {best[2]:.3f} oos {best[3]:.3f}"
                     if best else "no operating point"), flush=True)


if __name__ == "__main__":
    main()
