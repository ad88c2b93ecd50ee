"""Fit the escalation reader (escalation.Reader) and measure it on trades it was not fitted on.

Reads every case of every development trade (tests/eval/trades; never the blind ones) and of the
reader-only trades (bench/escalation-data/) with the model as the engine does (ModelScorer.read: the final hidden states averaged over the message's tokens
after a trade-independent prompt; cached in var/fit-cache/), then, for each trade, fits a logistic
regression on all the others and measures the one left out: escalation recall, look-alikes escalated
and ordinary questions escalated, for the rules alone, the reader alone, and either (what the engine
does).

    python bench/fit_escalation.py [l2] [threshold] [--veto=P] [--weight=W] [--no-extra|--dev-only]
    python bench/fit_escalation.py --write [l2] [--no-extra]                  # fit on all, write weights

`--veto=P`: a rule's complaint or anger cue does not escalate when the reader gives P(none) >= P
(the engine does this at escalation.VETO_AT; without the option it is measured without the veto).
`--no-extra`: without the reader-only trades of bench/escalation-data/; `--dev-only`: measured on them,
but fitted on the development trades only (the reader before they were written).
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wxkf.dialogue import escalation, evaluate  # noqa: E402

CACHE = ROOT / "var" / "fit-cache" / "escalation-reader-features.npz"
FOLDERS = {}


EXTRA = ROOT / "bench" / "escalation-data"
"""Labelled messages of ten more trades (escalations by reason, look-alikes, ordinary questions), written
for the reader only by a helper who saw none of the evaluation sets; no knowledge base. Never in
tests/eval: they train the reader, and leave-one-trade-out measures it on each of them too."""


def trades():
    out = {}
    for group in ("trades",):  # never the blind trades
        for d in sorted((ROOT / "tests" / "eval" / group).iterdir()):
            if (d / "cases.tsv").exists():
                out[d.name] = evaluate.read_cases(d / "cases.tsv")
                FOLDERS[d.name] = d
    if "--no-extra" not in sys.argv:
        for f in sorted(EXTRA.glob("*.tsv")):
            out["+" + f.stem] = evaluate.read_cases(f)
            FOLDERS["+" + f.stem] = next(iter(FOLDERS.values()))  # the reading needs no knowledge base
    return out


def read_all(data):
    """{(trade, text): the model's reading}, as the engine reads each message (ModelScorer.read).
    Cached in var/fit-cache/."""
    cached = {}
    if CACHE.exists():
        saved = np.load(CACHE, allow_pickle=True)
        cached = dict(zip(map(tuple, saved["keys"].tolist()), saved["emb"]))
    wanted = {(trade, text) for trade, cases in data.items() for _, text in cases}
    if not wanted <= cached.keys():
        from wxkf.config import Config
        from wxkf.dialogue import model as model_mod
        from wxkf.dialogue.engine import build_scorer
        from wxkf.dialogue.knowledge import load
        llm = model_mod.load(str(Config().model_path))
        for trade in data:
            todo = sorted(t for tr, t in wanted - cached.keys() if tr == trade)
            if not todo:
                continue
            scorer = build_scorer(load(FOLDERS[trade] / "knowledge"), llm)
            for text in todo:
                cached[(trade, text)] = scorer.read(text.split("||")[-1])
            scorer.close()
            print(f"  read {len(todo)} messages of {trade}", file=sys.stderr)
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(cached)
        np.savez(CACHE, keys=np.array(keys, dtype=object), emb=np.stack([cached[k] for k in keys]))
    return cached


ESCALATION_WEIGHT = 1.5
"""How much more an escalation counts than a calm message in the fit (they are rare)."""


def fit(X, y, l2=1.0, steps=400, lr=0.5, esc_weight=ESCALATION_WEIGHT):
    """Multinomial logistic regression by gradient descent; returns (W, b, mean, std)."""
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd
    k = y.max() + 1
    W = np.zeros((Z.shape[1], k))
    b = np.zeros(k)
    Y = np.eye(k)[y]
    weights = np.where(y > 0, esc_weight, 1.0)[:, None]
    for _ in range(steps):
        P = Z @ W + b
        P = np.exp(P - P.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        G = (P - Y) * weights
        W -= lr * (Z.T @ G / len(Z) + l2 * W / len(Z))
        b -= lr * G.mean(0)
    return W, b, mu, sd


def predict(model, X):
    W, b, mu, sd = model
    P = ((X - mu) / sd) @ W + b
    P = np.exp(P - P.max(1, keepdims=True))
    return P / P.sum(1, keepdims=True)


CLASSES = escalation.Reader.REASONS
assert CLASSES[1:] == evaluate.REASONS


def write(rows, l2, weight):
    from wxkf.config import Config
    from wxkf.dialogue import model as model_mod
    X = np.stack([r[4] for r in rows])
    W, b, mu, sd = fit(X, np.array([r[2] for r in rows]), l2=l2, esc_weight=weight)
    identity = escalation.model_identity(model_mod.load(str(Config().model_path)))
    np.savez(escalation.READER_WEIGHTS, weights=W.astype(np.float32), bias=b.astype(np.float32),
             mean=mu.astype(np.float32), scale=sd.astype(np.float32), model=np.array(identity))
    print(f"wrote {escalation.READER_WEIGHTS} ({len(rows)} cases, model {identity}, l2={l2})")


def main():
    data = trades()
    reading = read_all(data)
    rows = []
    for trade, cases in data.items():
        for label, text in cases:
            kind, _, arg = label.partition(":")
            y = CLASSES.index(arg) if kind == "escalate" and arg in CLASSES else (1 if kind == "escalate" else 0)
            rows.append((trade, kind, y, text, reading[(trade, text)]))
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    l2 = float(args[0]) if args else 50.0
    cut = float(args[1]) if len(args) > 1 else escalation.READER_AT
    veto = next((float(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--veto=")), None)
    weight = next((float(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--weight=")), ESCALATION_WEIGHT)
    if "--write" in sys.argv:
        return write(rows, l2, weight)
    dev_only = "--dev-only" in sys.argv  # the new trades measured, never trained on (the reader before them)
    sums = {name: np.zeros(7) for name in ("all", "development", "reader-only trades")}
    print(f"l2={l2} cut={cut}")
    print(f"{'trade':12} {'rules rec':>9} {'probe rec':>9} {'either':>7} | {'calm esc r/p/e':>15} | {'ordinary esc r/p/e':>18}")
    for held in data:
        train = [r for r in rows if r[0] != held and not (dev_only and r[0].startswith("+"))]
        test = [r for r in rows if r[0] == held]
        X = np.stack([r[4] for r in train])
        y = np.array([r[2] for r in train])
        model = fit(X, y, l2=l2, esc_weight=weight)
        P = predict(model, np.stack([r[4] for r in test]))
        probe = (1 - P[:, 0] >= cut) & ~np.array([escalation.defused(r[3].split("||")[-1]) for r in test])
        found = [escalation.detect(r[3].split("||")[-1]) for r in test]
        rules = np.array([e is not None for e in found])
        if veto is not None:  # the reader overrules a complaint or anger cue it reads as calm
            calm_read = P[:, 0] >= veto
            rules &= ~np.array([e is not None and e.reason in escalation.VETOABLE for e in found]) | ~calm_read
        esc = np.array([r[1] == "escalate" for r in test])
        calm = np.array([r[1] == "calm" for r in test])
        ordinary = ~esc & ~calm
        def rate(mask, sel):
            return f"{int(sel[mask].sum()):>3}"
        line = [esc.sum(), rules[esc].sum(), probe[esc].sum(), (rules | probe)[esc].sum(),
                (rules | probe)[calm].sum(), (rules | probe)[ordinary].sum(), ordinary.sum()]
        for name in ("all", "reader-only trades" if held.startswith("+") else "development"):
            sums[name] += line
        print(f"{held:12} {rules[esc].mean():9.2f} {probe[esc].mean():9.2f} {(rules | probe)[esc].mean():7.2f} | "
              f"{rate(calm, rules)}/{rate(calm, probe)}/{rate(calm, rules | probe)} of {calm.sum():>2} | "
              f"{rate(ordinary, rules)}/{rate(ordinary, probe)}/{rate(ordinary, rules | probe)} of {ordinary.sum():>3}")

    for name, (n, r, p, e, calm_e, ord_e, n_ord) in sums.items():
        if n:
            print(f"{name:12} {r / n:9.2f} {p / n:9.2f} {e / n:7.2f} | either escalated {int(calm_e)} "
                  f"look-alikes, {int(ord_e)} of {int(n_ord)} ordinary")


if __name__ == "__main__":
    main()
