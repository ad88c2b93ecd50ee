"""A simple lexical responder: character n-grams plus synonym groups against the knowledge base.

This is the stand-in until the dialogue engine lands; it keeps the same `decide()` contract.
"""
import re
import unicodedata

from .decision import Action, Decision

BUILTIN_SYNONYMS = (
    ("快递", "物流", "包裹", "发货", "到哪", "送到", "运单", "单号", "到货", "寄出", "什么时候到", "还没到", "没收到"),
    ("退款", "退货", "退钱", "售后", "不想要", "退了", "七天无理由", "换货"),
    ("发票", "开票", "抬头", "税号", "专票", "普票", "报销"),
    ("地址", "改地址", "收货地址", "填错", "换地址"),
    ("付款", "支付", "扣款", "扣钱", "付钱", "付不了", "未支付", "微信支付"),
    ("优惠", "优惠券", "满减", "活动", "折扣", "便宜", "券", "红包"),
    ("尺码", "大小", "码数", "size", "偏大", "偏小", "多大"),
    ("打不开", "加载", "白屏", "闪退", "报错", "卡住", "进不去", "页面"),
    ("国外", "海外", "国际", "泰国", "美国", "日本", "新加坡", "境外"),
    ("你好", "您好", "在吗", "hello", "hi", "有人吗"),
)

HUMAN_WORDS = ("转人工", "人工客服", "找人工", "真人", "活人", "人工服务")
NEGATIONS = ("不", "没", "别", "无需", "不用")


def normalize(text):
    text = unicodedata.normalize("NFKC", text or "").lower()
    return re.sub(r"\s+", " ", text).strip()


def features(text, groups):
    t = normalize(text)
    compact = re.sub(r"[\s\W_]+", "", t)
    feats = {f"1:{c}" for c in compact if not c.isdigit()}
    feats |= {f"2:{compact[i:i + 2]}" for i in range(len(compact) - 1)}
    for gi, group in enumerate(groups):
        if any(w in t for w in group):
            feats.add(f"syn:{gi}")
    return feats


def _weight(f):
    return 3.0 if f.startswith("syn:") else 1.0 if f.startswith("2:") else 0.3


def explicit_escalation(text, kb):
    """An explicit request for a human, or one of the shop's escalation keywords (not negated)."""
    t = normalize(text)
    for word in HUMAN_WORDS + tuple(kb.escalation_keywords):
        at = t.find(word.lower())
        if at >= 0 and not any(t[max(0, at - len(n)):at] == n for n in NEGATIONS):
            return "request" if word in HUMAN_WORDS else "keyword"
    return None


class KeywordMatcher:
    """Decides from the knowledge base alone; `threshold` is the score needed to answer."""

    def __init__(self, store, threshold=0.32):
        self.store = store
        self.threshold = threshold
        self._kb = None
        self._index = []

    def _refresh(self):
        kb = self.store.get()
        if kb is not self._kb:
            groups = BUILTIN_SYNONYMS + tuple(kb.synonyms)
            index = []
            for intent in kb.intents:
                docs = list(intent.examples) + [intent.title]
                index.append((intent, [features(d, groups) for d in docs],
                              [normalize(k) for k in intent.keywords]))
            self._kb, self._groups, self._index = kb, groups, index
        return self._kb

    def classify(self, text):
        """[(intent, score)] best first."""
        self._refresh()
        q = features(text, self._groups)
        t = normalize(text)
        scored = []
        for intent, docs, kws in self._index:
            best = 0.0
            for d in docs:
                common = sum(_weight(f) for f in q & d)
                union = sum(_weight(f) for f in q | d)
                if union:
                    best = max(best, common / union)
            if any(k and k in t for k in kws):
                best = max(best, 0.5) + 0.2
            scored.append((intent, min(best, 1.0)))
        scored.sort(key=lambda p: p[1], reverse=True)
        return scored

    def decide(self, message, conversation):
        kb = self._refresh()
        if message.kind == "event":
            if message.event in ("user_enter_tempsession", "subscribe"):
                return Decision(Action.REPLY, kb.welcome, source="welcome")
            return Decision(Action.SILENT, source="silent")
        if message.kind != "text":
            template = kb.canned.get(message.kind)
            if not template:
                return Decision(Action.SILENT, source="silent")
            return Decision(Action.REPLY, template.replace("{title}", message.title or "这个页面"), source="canned")
        if not message.text.strip():
            return Decision(Action.SILENT, source="silent")
        reason = explicit_escalation(message.text, kb)
        if reason:
            return Decision(Action.ESCALATE, kb.escalation_reply, source="escalate", reason=reason)
        ranked = self.classify(message.text)
        if ranked and ranked[0][1] >= self.threshold:
            intent, score = ranked[0]
            return Decision(Action.REPLY, intent.answer, source="knowledge", intent=intent.id,
                            confidence=round(score, 3))
        top = ranked[0] if ranked else (None, 0.0)
        return Decision(Action.REPLY, kb.fallback, source="fallback",
                        intent=None, confidence=round(top[1], 3))
