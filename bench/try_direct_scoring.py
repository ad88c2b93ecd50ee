"""Tried and dropped: does "direct" scoring, log P(intent title | message), add to the calibration?

    .venv/bin/python bench/try_direct_scoring.py     (after bench/fit_confidence.py filled var/fit-cache)

For every cached development case (app, clinic, hotel, restaurant, school) it scores each intent's
title after 顾客发来的消息：<message>\n这条消息问的是： (one batch per title over all cases), then
compares, leave one trade out, the shipped calibration features with and without two more: the
direct margin of the chosen intent over the other candidates, and whether direct scoring ranks it
first. Results in docs/dialogue.md ("tried and dropped"). The blind trades are never read here.
"""
import json
import sys
from pathlib import Path
import numpy as np
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from wxkf.dialogue.knowledge import load
from wxkf.dialogue.scorer import ModelScorer, NEUTRAL
from wxkf.dialogue.intent import IntentClassifier
from wxkf.dialogue import model as model_mod
from wxkf import config as config_mod
from wxkf.dialogue.understand import CALIBRATION as cal
from fit_lexical import fit
from fit_confidence import answer_counts, features, training_set
DEV = ROOT / "tests/eval/trades"
out_path = ROOT / "var" / "fit-cache" / "direct.json"
llm = model_mod.load(config_mod.load(env={}).model_path)
rows = []
cache = json.loads(out_path.read_text()) if out_path.exists() else {}
for t in ["app", "clinic", "hotel", "restaurant", "school"]:
    kb = load(DEV / t / "knowledge")
    clf = IntentClassifier(kb)
    cases = json.loads((ROOT / "var/fit-cache" / f"{t}.json").read_text())
    if t not in cache:
        prompts = {i: f"顾客发来的消息：{r['text'][:60]}\n这条消息问的是：" for i, r in enumerate(cases)}
        sc = ModelScorer(llm, prompts, max_candidates=len(prompts), max_message_tokens=12)
        direct = {i: {} for i in range(len(cases))}
        for it in kb.intents:
            got = sc.score(it.title, list(range(len(cases))))
            for i, (lp, n) in got.items():
                direct[i][it.id] = lp
        sc.close()
        cache[t] = [direct[i] for i in range(len(cases))]
        out_path.write_text(json.dumps(cache, ensure_ascii=False))
        print("scored", t, flush=True)
    for r, d in zip(cases, cache[t]):
        lex = clf.rank(r["text"])
        r.update(trade=t, lex={x.intent_id: x.score for x in lex}, lconf=lex[0].confidence,
                 order=[x.intent_id for x in lex], direct=d)
        rows.append(r)
w = cal.lexical_weight
ins = [r for r in rows if r["label"] != "none"]
print("direct top-1 (all intents):", np.mean([max(r["direct"], key=r["direct"].get) == r["label"] for r in ins]))


def channel_top(r):
    return max((c for c in r["scores"] if c != NEUTRAL), key=lambda c: r["scores"][c])


print("channel top-1 (all intents):", np.mean([channel_top(r) == r["label"] for r in ins]))


def feats(r, k, extra):
    top, f = features(r, k, w)
    if not extra:
        return top, f
    cands = [c for c in r["order"][:k] if c in r["scores"]]
    d = r["direct"]
    others = [d[c] for c in cands if c != top]
    dm = d[top] - max(others) if others else 1.0
    rank = sorted(d, key=lambda c: -d[c]).index(top)
    return top, np.append(f, [dm / 5, float(rank == 0)])


def simulate(train, test, extra):
    theta = fit(*training_set(train, lambda r, k: feats(r, k, extra)), steps=3000, lr=0.1, l2=1e-3)
    res = {}
    for th in np.arange(0.5, 0.96, 0.025):
        res[round(th, 3)] = answer_counts(test, theta, lambda r, k: feats(r, k, extra), th, 0.3)
    return res


trades = sorted({r["trade"] for r in rows})
for extra in (False, True):
    tot = None
    for t in trades:  # leave one trade out: calibration fitted on the others
        res = simulate([r for r in rows if r["trade"] != t], [r for r in rows if r["trade"] == t], extra)
        tot = res if tot is None else {k: tuple(a + b for a, b in zip(tot[k], v)) for k, v in res.items()}
    best = None
    for th, (right, wrong, oos, n_in, n_out) in sorted(tot.items()):
        fr = (right / n_in, wrong / n_in, oos / n_out)
        if fr[1] <= 0.03 and fr[2] <= 0.10 and (best is None or fr[0] > best[1][0]):
            best = (th, fr)
    print("extra" if extra else "base ", "LOTO best meeting targets:", best)
    for th in (0.7, 0.8, 0.9):
        right, wrong, oos, n_in, n_out = tot[th]
        print(f"   at {th}: right {right/n_in:.3f} wrong {wrong/n_in:.3f} oos {oos/n_out:.3f}")
