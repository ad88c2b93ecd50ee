"""What counts as evidence for a reading the model chose: a shared word, or also the model's reading?

The engine caps a reading at the fallback when the chosen intent shares no word with the message
(`Calibration.lexical_floor`): the model alone once read "今天天气怎么样" as a delivery question. With
the reading's candidates (bench/sim_reading_candidates.py), the intents the reading brings are exactly
those with no shared word, so the floor sends them to the fallback. Here the floor is relaxed when the
reading agrees (the chosen intent is among its nearest 2 with cosine >= c), simulated end to end with
the shipped calibration and thresholds (answer 0.8, suggest 0.2, options 0.08) on the cached scores of
the development trades: answered right, wrong, right answer or right suggestion, out-of-scope answered
and out-of-scope offered a suggestion.

    python bench/sim_evidence.py
"""
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from wxkf.dialogue.engine import ANSWER_AT, OPTION_AT, SUGGEST_AT  # noqa: E402
from wxkf.dialogue.intent import IntentClassifier  # noqa: E402
from wxkf.dialogue.scorer import NEUTRAL  # noqa: E402
from wxkf.dialogue.understand import CALIBRATION as CAL  # noqa: E402

import fit_intent_reader as fir  # noqa: E402

DEV = ROOT / "tests" / "eval" / "trades"


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def main():
    kbs, reading, protos, _, unit = fir.load_readings()

    rows_all = []
    for path in sorted((ROOT / "var" / "fit-cache").glob("*.json")):
        trade = path.stem
        kb = kbs[trade]
        clf = IntentClassifier(kb)
        ids = [i.id for i in kb.intents]
        cent = {}
        for i in kb.intents:
            c = np.mean([unit(protos[(trade, t)]) for t in fir.intent_texts(i)], axis=0)
            cent[i.id] = c / np.linalg.norm(c)
        for r in json.loads(path.read_text()):
            if (trade, r["text"]) not in reading:
                continue
            lex = clf.rank(r["text"])
            u = unit(reading[(trade, r["text"])])
            cos = {i: float(u @ cent[i]) for i in ids}
            rows_all.append((trade, r, lex, cos))
    for variant in ("lex3", "lex2+read2"):
        for c, need_pmi in ([(None, False)] if variant == "lex3" else
                            [(None, False)] + [(c, p) for c in (0.0, 0.1, 0.2, 0.3) for p in (False, True)]):
            n_in = n_oos = right = wrong = offered = oos_ans = oos_off = 0
            for trade, r, lex, cos in rows_all:
                lexs = {x.intent_id: x.score for x in lex}
                near = sorted(cos, key=lambda i: -cos[i])[:2]
                cands = [x.intent_id for x in lex[:3]] if variant == "lex3" else \
                    list(dict.fromkeys([x.intent_id for x in lex[:2]] + near))
                lp = {k: v for k, v in r["scores"].items() if k != NEUTRAL}
                cands = [k for k in cands if k in lp]
                n = max(1, r["n"])
                z = {k: lp[k] / n + lexs.get(k, 0.0) for k in cands}
                best = sorted(z, key=lambda k: -z[k])
                top = best[0]
                margin = z[top] - z[best[1]] if len(best) > 1 else 1.0
                pmi = (lp[top] - r["scores"][NEUTRAL]) / n
                conf = sigmoid(CAL.bias + CAL.margin * margin + CAL.pmi * pmi + CAL.lexical * lexs.get(top, 0.0))
                evidence = lexs.get(top, 0.0) >= CAL.lexical_floor or (
                    c is not None and top in near and cos[top] >= c and (pmi >= CAL.pmi_floor or not need_pmi))
                if not evidence:
                    conf = min(conf, CAL.no_evidence_cap)
                elif pmi < CAL.pmi_floor:
                    conf = min(conf, CAL.out_of_scope_cap)
                rest = [math.exp(z[k] - z[top]) for k in best[1:]]
                total = sum(rest) or 1.0
                confs = [conf] + [min(conf, (1 - conf) * w / total) for w in rest]
                answered = conf >= ANSWER_AT
                options = [best[0]] + [k for k, q in zip(best[1:3], confs[1:3]) if q >= OPTION_AT] \
                    if SUGGEST_AT <= conf < ANSWER_AT else []
                if r["label"] == "none":
                    n_oos += 1
                    oos_ans += answered
                    oos_off += bool(options)
                else:
                    n_in += 1
                    right += answered and top == r["label"]
                    wrong += answered and top != r["label"]
                    offered += (answered and top == r["label"]) or r["label"] in options
            what = "word only" if c is None else f"word or reading cos>={c}" + (" and pmi" if need_pmi else "")
            print(f"{variant:11} evidence {what:32} "
                  f"right {right / n_in:.3f} wrong {wrong / n_in:.3f} right-or-offered {offered / n_in:.3f} "
                  f"oos answered {oos_ans / n_oos:.3f} oos offered {oos_off / n_oos:.3f}", flush=True)


if __name__ == "__main__":
    main()
