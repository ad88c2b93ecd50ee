"""Escalation detection: who needs a human, why, and how soon.

Rules over normalized text, each category with its own cue words; a cue does not count when it is
negated just before ("不急", "我不投诉", "不用转人工") or when it is only part of a harmless
look-alike word ("紧身裤", "人工智能", "急救包", "报警器"). Shops add complaint words in the knowledge
base (`escalation.keywords`). Repeated failure (the bot fell back twice in a row, or the shopper asks
the same thing again after a non-answer) escalates too, from the conversation state.

Priority: urgent > complaint > anger > request > repeated failure.
"""
import dataclasses
import functools
import re

from .textnorm import normalize

PRIORITY = {"urgent": 4, "complaint": 3, "anger": 2, "request": 1, "repeated_failure": 1}

CUES = {
    "request": ("转人工", "人工客服", "人工服务", "找人工", "叫人工", "要人工", "接人工", "真人客服", "找真人",
                "要真人", "给我真人", "跟真人", "和真人", "活人", "客服人员", "叫你们经理", "找你们经理",
                "找你们领导", "人工回复", "人工来", "转接人工", "联系人工", "不要机器人", "别让机器人"),
    "complaint": ("投诉", "12315", "12345", "骗人", "骗子", "诈骗", "骗钱", "欺诈", "差评", "报警", "起诉", "律师",
                  "消协", "消费者协会", "工商局", "举报", "曝光", "虚假宣传", "维权", "给个说法", "给我个说法"),
    "urgent": ("紧急", "很急", "急用", "着急", "急急", "急死", "十万火急", "马上要", "马上就要", "今天必须",
               "立刻", "赶紧", "过敏", "起红疹", "红疹", "发霉", "霉变", "肚子疼", "肚子痛", "拉肚子", "腹泻",
               "呕吐", "中毒", "食物中毒", "冒烟", "起火", "着火", "爆炸", "漏电", "触电", "烫伤", "受伤", "流血",
               "危险"),
    "anger": ("气死", "垃圾", "什么破", "破服务", "恶心", "无语", "坑人", "坑爹", "什么玩意", "烦死", "太过分",
              "服了", "什么态度", "会不会做生意", "滚", "妈的", "tmd", "fuck", "shit", "智障", "废物"),
}

LOOKALIKES = ("人工智能", "人工费", "急救包", "急救箱", "报警器", "紧身", "紧急联系人", "真人秀", "骗子多",
              "差评返现", "气垫", "垃圾袋", "垃圾桶", "过敏体质", "发霉的话", "马上就到")

# A cue preceded by one of these (optionally with 很/太/是/要/用) is negated: 不急, 我不投诉, 不用转人工.
NEGATION = re.compile(r"(不|没|別|别|无需|不用|不想|不要|没有|不是|并不|不必)(很|太|是|要|用|想|打算|去)?$")

_EXCLAIM = re.compile(r"[!！]{3,}")


@dataclasses.dataclass(frozen=True)
class Escalation:
    reason: str
    priority: int
    cue: str


_LOOKALIKE_RE = re.compile("|".join(re.escape(w) for w in sorted(LOOKALIKES, key=len, reverse=True)))


def _mask_lookalikes(text):
    return _LOOKALIKE_RE.sub(lambda m: "□" * len(m.group()), text)


@functools.lru_cache(maxsize=64)
def _patterns(extra_complaint_words):
    """One compiled alternation per category (longest cue first): the webhook runs this on every push."""
    out = {}
    for reason, cues in CUES.items():
        words = cues + tuple(w.lower() for w in extra_complaint_words) if reason == "complaint" else cues
        out[reason] = re.compile("|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True) if w))
    return out


_A_NOT_A = re.compile(r"(有没有|是不是|要不要|能不能|可不可以|会不会|用不用)$")


def _negated(text, at):
    before = text[max(0, at - 6):at]
    return bool(NEGATION.search(before)) and not _A_NOT_A.search(before)


def detect(text, extra_complaint_words=(), history=None):
    """The strongest escalation in `text`, or None.

    `history`: the conversation's recent turns (dicts with "source" and "text"), newest last,
    for repeated-failure detection.
    """
    t = _mask_lookalikes(normalize(text))
    found = []
    for reason, pattern in _patterns(tuple(extra_complaint_words)).items():
        for m in pattern.finditer(t):
            if not _negated(t, m.start()):
                found.append(Escalation(reason, PRIORITY[reason], m.group()))
                break
    if t.strip() in ("人工", "真人", "客服", "人工客服"):
        found.append(Escalation("request", PRIORITY["request"], t.strip()))
    if _EXCLAIM.search(text) and not found:
        found.append(Escalation("anger", PRIORITY["anger"], "!!!"))
    if not found and history:
        bot_turns = [h for h in history if h.get("role") == "bot"]
        if len(bot_turns) >= 2 and all(h.get("source") == "fallback" for h in bot_turns[-2:]):
            found.append(Escalation("repeated_failure", PRIORITY["repeated_failure"], "two fallbacks in a row"))
    if not found:
        return None
    return max(found, key=lambda e: e.priority)
