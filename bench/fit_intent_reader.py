"""Can the model's reading of a message (the escalation reader's features) find its intent?

Measured leave-one-trade-out on the DEVELOPMENT trades only (tests/eval/trades; never the blind ones):
each intent is represented by the model's readings of its examples and title (ModelScorer.read, as
for the message), and a message goes to the intent whose representation is most similar:

- raw: cosine similarity of standardised readings, nearest intent centroid;
- learned: a low-rank bilinear similarity s(m, i) = (W m)·(W c_i), fitted on the other trades'
  labelled messages (softmax over each trade's own intents), so what it learns is how to compare
  two messages, not any trade's intents.

Reports top-1 and top-k over in-scope cases, and how often the lexical top 3 together with the
reading's top k hold the expected intent (the candidates the model's scoring can choose from).

    python bench/fit_intent_reader.py [rank] [l2] [--write]
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from wxkf.dialogue.intent import IntentClassifier  # noqa: E402
from wxkf.dialogue.knowledge import load  # noqa: E402

import fit_escalation  # noqa: E402  (the message readings, cached)

PROTO_CACHE = ROOT / "var" / "fit-cache" / "intent-reader-protos.npz"


def intent_texts(intent):
    return list(intent.examples) + [intent.title]


def read_protos(kbs):
    """{(trade, text): reading} for every intent's examples and title. Cached."""
    cached = {}
    if PROTO_CACHE.exists():
        saved = np.load(PROTO_CACHE, allow_pickle=True)
        cached = dict(zip(map(tuple, saved["keys"].tolist()), saved["emb"]))
    wanted = {(trade, t) for trade, kb in kbs.items() for i in kb.intents for t in intent_texts(i)}
    if not wanted <= cached.keys():
        from wxkf.config import Config
        from wxkf.dialogue import model as model_mod
        from wxkf.dialogue.engine import build_scorer
        llm = model_mod.load(str(Config().model_path))
        for trade, kb in kbs.items():
            todo = sorted(t for tr, t in wanted - cached.keys() if tr == trade)
            if todo:
                scorer = build_scorer(kb, llm)
                for text in todo:
                    cached[(trade, text)] = scorer.read(text)
                scorer.close()
                print(f"  read {len(todo)} intent texts of {trade}", file=sys.stderr)
        keys = sorted(cached)
        np.savez(PROTO_CACHE, keys=np.array(keys, dtype=object), emb=np.stack([cached[k] for k in keys]))
    return cached


def load_readings():
    """(knowledge bases, message readings, intent-text readings, standardise, unit) for the
    development trades; `standardise(v)`: a reading standardised over all of them; `unit(v)`: the
    same as a unit vector."""
    data = fit_escalation.trades()
    reading = fit_escalation.read_all(data)
    kbs = {name: load(fit_escalation.FOLDERS[name] / "knowledge") for name in data}
    protos = read_protos(kbs)
    allv = np.stack(list(reading.values()) + list(protos.values())).astype(np.float64)
    mu, sd = allv.mean(0), allv.std(0) + 1e-6

    def standardise(v):
        return (np.asarray(v, dtype=np.float64) - mu) / sd

    def unit(v):
        v = standardise(v)
        return v / (np.linalg.norm(v) + 1e-9)

    return kbs, reading, protos, standardise, unit


class Trade:
    def __init__(self, name, kb, cases, reading, protos):
        self.name = name
        self.ids = [i.id for i in kb.intents]
        self.texts = [(i.id, t) for i in kb.intents for t in intent_texts(i)]
        self.T = np.stack([protos[(name, t)] for _, t in self.texts]).astype(np.float64)
        self.owner = np.array([self.ids.index(i) for i, _ in self.texts])
        rows = [(label, text) for label, text in cases if label in self.ids]
        self.labels = np.array([self.ids.index(label) for label, _ in rows])
        self.msgs = [text for _, text in rows]
        self.X = np.stack([reading[(name, text)] for _, text in rows]).astype(np.float64)
        clf = IntentClassifier(kb)
        self.lexical = [[c.intent_id for c in clf.rank(text.split("||")[-1])[:3]] for text in self.msgs]

    def centroids(self, Z):
        """Mean of each intent's text vectors (Z: the intent texts, transformed)."""
        return np.stack([Z[self.owner == k].mean(0) for k in range(len(self.ids))])


def standardiser(trades):
    allx = np.concatenate([t.X for t in trades] + [t.T for t in trades])
    return allx.mean(0), allx.std(0) + 1e-6


def fit_bilinear(trades, mu, sd, rank=64, l2=1e-3, steps=300, lr=0.01, tau=0.1, seed=0):
    """W (rank x 640) maximising softmax(cos(W x, W c_i) / tau) of the expected intent, Adam."""
    rng = np.random.default_rng(seed)
    d = len(mu)
    W = rng.normal(0, 1 / np.sqrt(d), (rank, d))
    m = np.zeros_like(W)
    v = np.zeros_like(W)
    data = [((t.X - mu) / sd, (t.T - mu) / sd, t) for t in trades]
    n_total = sum(len(t.labels) for t in trades)
    for step in range(1, steps + 1):
        grad = l2 * W
        for X, T, t in data:
            C = t.centroids(T)                          # intents x d
            U, V = X @ W.T, C @ W.T                      # n x r, k x r
            nu = np.linalg.norm(U, axis=1, keepdims=True) + 1e-9
            nv = np.linalg.norm(V, axis=1, keepdims=True) + 1e-9
            Uh, Vh = U / nu, V / nv
            S = Uh @ Vh.T / tau
            P = np.exp(S - S.max(1, keepdims=True))
            P /= P.sum(1, keepdims=True)
            R = P.copy()
            R[np.arange(len(R)), t.labels] -= 1
            R /= tau * n_total
            dUh, dVh = R @ Vh, R.T @ Uh                  # through the cosine normalisation
            dU = (dUh - Uh * (dUh * Uh).sum(1, keepdims=True)) / nu
            dV = (dVh - Vh * (dVh * Vh).sum(1, keepdims=True)) / nv
            grad += dU.T @ X + dV.T @ C
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad ** 2
        W -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return W


def similarities(t, mu, sd, W=None):
    X, T = (t.X - mu) / sd, (t.T - mu) / sd
    C = t.centroids(T)
    if W is not None:
        X, C = X @ W.T, C @ W.T
    X = X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-9)
    C = C / (np.linalg.norm(C, axis=1, keepdims=True) + 1e-9)
    return X @ C.T


def report(name, t, S, k=2):
    order = np.argsort(-S, axis=1)
    top1 = (order[:, 0] == t.labels).mean()
    topk = np.mean([t.labels[n] in order[n, :k] for n in range(len(t.labels))])
    lex3 = np.mean([t.ids[t.labels[n]] in t.lexical[n] for n in range(len(t.labels))])
    union = np.mean([t.ids[t.labels[n]] in set(t.lexical[n]) | {t.ids[j] for j in order[n, :k]}
                     for n in range(len(t.labels))])
    return f"{name:12} n={len(t.labels):3}  top1 {top1:.2f}  top{k} {topk:.2f}  lexical3 {lex3:.2f}  lex3+read{k} {union:.2f}"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rank = int(args[0]) if args else 64
    l2 = float(args[1]) if len(args) > 1 else 1e-3
    data = fit_escalation.trades()
    reading = fit_escalation.read_all(data)
    kbs = {name: load(fit_escalation.FOLDERS[name] / "knowledge") for name in data}
    protos = read_protos(kbs)
    trades = [Trade(name, kbs[name], data[name], reading, protos) for name in data]
    mu, sd = standardiser(trades)
    print("raw cosine, nearest centroid:")
    for t in trades:
        print(" ", report(t.name, t, similarities(t, mu, sd)))
    print(f"learned bilinear (rank {rank}, l2 {l2}), leave one trade out:")
    for held in trades:
        train = [t for t in trades if t is not held]
        W = fit_bilinear(train, mu, sd, rank=rank, l2=l2)
        print(" ", report(held.name, held, similarities(held, mu, sd, W)), flush=True)


if __name__ == "__main__":
    main()
