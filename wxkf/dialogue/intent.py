"""Intent classification from the knowledge base alone (3-5 examples per intent are enough).

Each text becomes a weighted bag of features: concepts from the synonym lexicon (built-in groups
plus the shop's own), jieba words, and character bigrams. An intent is represented by its examples,
its title and keywords, and (weakly) its approved answer. Features are weighted by how specific they
are to few intents (IDF over intents). The score of an intent mixes the best single example match
with the match against the intent's whole profile; scores become a calibrated confidence through a
softmax whose temperature was fitted on the evaluation set (`wxkf eval`).
"""
import dataclasses
import logging
import math
import re
from collections import Counter

from .lexicon import GROUPS
from .textnorm import compact, normalize

log = logging.getLogger("wxkf.intent")

KIND_WEIGHT = {"c": 3.0, "w": 1.0, "b": 0.5, "k": 3.0}
STOPWORDS = set("的 了 吗 呢 吧 啊 呀 我 你 们 是 在 有 么 这 那 个 一 不 也 就 都 和 还 要 能 可以 怎么 什么 请问 "
                "一下 一个 这个 那个 为什么 怎么办 我的 你们 可 把 给 到 会 想 很 太 下 上 了吗".split())

_jieba = None


def _cut(text):
    global _jieba
    if _jieba is None:
        import jieba
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _jieba = jieba
    return _jieba.lcut(text)


@dataclasses.dataclass(frozen=True)
class Ranked:
    intent_id: str
    score: float
    confidence: float


class Lexicon:
    def __init__(self, extra_groups=()):
        groups = {name: list(words) for name, words in GROUPS.items()}
        for i, words in enumerate(extra_groups):
            words = [normalize(w) for w in words]
            home = next((n for n, ws in groups.items() if any(w in ws for w in words)), None)
            if home:
                groups[home].extend(w for w in words if w not in groups[home])
            else:
                groups[f"shop{i}"] = words
        # Longest words first, so "收货地址" is read as one concept before "地址".
        self.words = sorted(((normalize(w), name) for name, ws in groups.items() for w in ws),
                            key=lambda p: -len(p[0]))

    def concepts(self, text):
        found, rest = set(), text
        for word, name in self.words:
            if word and word in rest:
                found.add(name)
                rest = rest.replace(word, " ")
        return found


def features(text, lexicon):
    t = normalize(text)
    c = compact(t)
    feats = Counter()
    for name in lexicon.concepts(t):
        feats["c:" + name] += 1
    for w in _cut(t):
        w = w.strip()
        if w and w not in STOPWORDS and not re.fullmatch(r"[\W_]+", w):
            feats["w:" + w] += 1
    for i in range(len(c) - 1):
        bigram = c[i:i + 2]
        if not bigram.isdigit():
            feats["b:" + bigram] += 1
    return feats


def _norm(vec):
    return math.sqrt(sum(v * v for v in vec.values())) or 1.0


class IntentClassifier:
    """Built from a KnowledgeBase; `rank(text)` returns every intent, best first."""

    def __init__(self, kb, temperature=0.06, example_weight=0.6):
        self.kb = kb
        self.temperature = temperature
        self.example_weight = example_weight
        self.lexicon = Lexicon(kb.synonyms)
        docs = {}
        for intent in kb.intents:
            examples = [features(e, self.lexicon) for e in intent.examples + (intent.title,)]
            keywords = Counter()
            for k in intent.keywords:
                keywords.update(features(k, self.lexicon))
                keywords["k:" + normalize(k)] += 1
            answer = features(intent.answer, self.lexicon)
            docs[intent.id] = (examples, keywords, answer)
        # IDF over intents: a feature found in one intent's profile says more than one found in many.
        df = Counter()
        for examples, keywords, answer in docs.values():
            seen = set(keywords)
            for e in examples:
                seen |= set(e)
            seen |= {f for f in answer if f.startswith("c:")}
            df.update(seen)
        n = max(1, len(docs))
        self.idf = {f: math.log(1 + n / d) for f, d in df.items()}
        self.default_idf = math.log(1 + n)
        self.intents = []
        for intent in kb.intents:
            examples, keywords, answer = docs[intent.id]
            ex_vecs = [self._weigh(e) for e in examples]
            profile = Counter()
            for e in examples:
                profile.update({f: 1 for f in e})
            profile.update({f: 1 for f in keywords})
            profile.update({f: 0.5 for f in answer if f.startswith("c:") or f.startswith("w:")})
            self.intents.append((intent, ex_vecs, self._weigh(profile)))

    def _weigh(self, feats):
        vec = {f: KIND_WEIGHT[f[0]] * self.idf.get(f, self.default_idf) * (1 + math.log(c)) if c >= 1
               else KIND_WEIGHT[f[0]] * self.idf.get(f, self.default_idf) * c for f, c in feats.items()}
        return vec, _norm(vec)

    @staticmethod
    def _cos(q, d):
        qv, qn = q
        dv, dn = d
        if len(qv) > len(dv):
            qv, dv = dv, qv
        return sum(v * dv.get(f, 0.0) for f, v in qv.items()) / (qn * dn)

    def rank(self, text):
        q = self._weigh(features(text, self.lexicon))
        scored = []
        for intent, ex_vecs, profile in self.intents:
            best = max(self._cos(q, e) for e in ex_vecs)
            score = self.example_weight * best + (1 - self.example_weight) * self._cos(q, profile)
            scored.append((intent.id, score))
        scored.sort(key=lambda p: -p[1])
        top = scored[0][1] if scored else 0.0
        exps = [math.exp((s - top) / self.temperature) for _, s in scored]
        total = sum(exps) or 1.0
        # Confidence: the softmax share, damped when even the best match is weak.
        strength = min(1.0, top / 0.35)
        return [Ranked(i, round(s, 4), round(e / total * strength, 4)) for (i, s), e in zip(scored, exps)]
