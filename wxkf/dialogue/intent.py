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

from .lexicon import PACKS
from .thesaurus import cilin
from .textnorm import compact, normalize

log = logging.getLogger("wxkf.intent")

KIND_WEIGHT = {"c": 3.0, "w": 1.0, "b": 0.5, "t": 0.7, "k": 3.0}
"""Feature kinds: concept of a pack or of the shop's synonyms, jieba word, character bigram,
词林 thesaurus group, admin keyword."""

# Function words and the politeness every trade shares: they say nothing about what is asked.
STOPWORDS = set("的 了 吗 呢 吧 啊 呀 哦 哈 嘛 么 我 你 您 他 她 们 是 在 有 这 那 个 一 不 也 就 都 和 还 要 能 "
                "可以 怎么 什么 请问 一下 一个 这个 那个 为什么 怎么办 我的 你们 可 把 给 到 会 想 很 太 下 上 "
                "了吗 吗 请 问 问下 问一下 麻烦 谢谢 你好 您好 在吗 好的 嗯 啥 咋 如何 多少 几 哪 哪里 哪儿 "
                "现在 今天 就是 还是 或者 如果 但是 因为 所以 然后 已经 一直 没 没有 是不是 能不能 可不可以 "
                "有没有 需要 应该 自己 咱们 我们 大家 这里 那里 这边 那边 时候".split())

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
    example: float = 0.0      # similarity to the closest single example (lexical ranking only)


class Lexicon:
    """Concept groups: the packs a shop switched on (`packs:` in the knowledge base) and the shop's own
    `synonyms:`. A shop group that shares a word with a pack's group joins it."""

    def __init__(self, extra_groups=(), packs=()):
        groups = {}
        for pack in packs:
            for name, words in PACKS[pack].items():
                groups.setdefault(name, []).extend(words)
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


def features(text, lexicon, thesaurus=None):
    t = normalize(text)
    c = compact(t)
    feats = Counter()
    for name in lexicon.concepts(t):
        feats["c:" + name] += 1
    for w in _cut(t):
        w = w.strip()
        if w and w not in STOPWORDS and not re.fullmatch(r"[\W_]+", w):
            feats["w:" + w] += 1
            if thesaurus is not None:
                for code in thesaurus.codes(w):
                    feats["t:" + code] += 1
    for i in range(len(c) - 1):
        bigram = c[i:i + 2]
        if not bigram.isdigit():
            feats["b:" + bigram] += 1
    return feats


def _norm(vec):
    return math.sqrt(sum(v * v for v in vec.values())) or 1.0


class IntentClassifier:
    """Built from a KnowledgeBase; `rank(text)` returns every intent, best first."""

    def __init__(self, kb, temperature=0.06, example_weight=0.6, thesaurus=True):
        self.kb = kb
        self.temperature = temperature
        self.example_weight = example_weight
        self.lexicon = Lexicon(kb.synonyms, kb.packs)
        self.thesaurus = cilin() if thesaurus else None
        docs = {}
        for intent in kb.intents:
            examples = [self.features(e) for e in intent.examples + (intent.title,)]
            keywords = Counter()
            for k in intent.keywords:
                keywords.update(self.features(k))
                keywords["k:" + normalize(k)] += 1
            answer = self.features(intent.answer)
            docs[intent.id] = (examples, keywords, answer)
        # IDF over intents: a feature found in one intent's profile says more than one found in many.
        df = Counter()
        for examples, keywords, answer in docs.values():
            seen = set(keywords)
            for e in examples:
                seen |= set(e)
            seen |= {f for f in answer if f[0] in "cwt"}
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
            profile.update({f: 0.5 for f in answer if f[0] in "cwt"})
            self.intents.append((intent, ex_vecs, self._weigh(profile)))

    def features(self, text):
        return features(text, self.lexicon, self.thesaurus)

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
        q = self._weigh(self.features(text))
        scored = []
        for intent, ex_vecs, profile in self.intents:
            best = max(self._cos(q, e) for e in ex_vecs)
            score = self.example_weight * best + (1 - self.example_weight) * self._cos(q, profile)
            scored.append((intent.id, score, best))
        scored.sort(key=lambda p: -p[1])
        if not scored:
            return []
        top = scored[0][1]
        second = scored[1][1] if len(scored) > 1 else 0.0
        exps = [math.exp((s - top) / self.temperature) for _, s, _ in scored]
        total = sum(exps) or 1.0
        # The top intent's confidence: the chance it is right, from how strong and how clear the match
        # is (fitted on the development trades, bench/fit_lexical.py); the rest share the remainder.
        sure = _sigmoid(CONFIDENCE[0] + CONFIDENCE[1] * top + CONFIDENCE[2] * (top - second)
                        + CONFIDENCE[3] * scored[0][2]) * min(1.0, top / WEAK_MATCH)
        out = [Ranked(scored[0][0], round(top, 4), round(sure, 4), round(scored[0][2], 4))]
        rest = total - exps[0] or 1.0
        out += [Ranked(i, round(s, 4), round((1 - sure) * e / rest, 4), round(b, 4))
                for (i, s, b), e in zip(scored[1:], exps[1:])]
        return out


CONFIDENCE = (-1.268, 4.130, 4.853, -1.395)
"""(bias, best score, margin over the runner-up, closest example) of the lexical confidence."""


WEAK_MATCH = 0.15
"""Best score under which the confidence is damped toward 0: a message sharing almost nothing with any
intent is not "probably" anything, whatever the fitted curve says at 0."""


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, x))))
