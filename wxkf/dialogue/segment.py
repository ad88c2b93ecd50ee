"""Messages as customers write them: politeness around the question, two questions in one message,
short follow-ups that only make sense with the previous turn.

Everything here is general Chinese (and a little English) chat usage, the same in every trade:
greetings, thanks, "请问", "另外", "那…呢". No trade vocabulary.
"""
import re

from .textnorm import compact, normalize

_POLITE_WORDS = (
    "你好呀", "你好", "您好", "在吗", "在么", "在不在", "有人吗", "有人在吗", "有人在么", "客服在吗", "客服你好",
    "客服您好", "客服", "亲", "hello", "hi", "hey", "哈喽", "哈啰", "嗨", "早上好", "中午好", "下午好", "晚上好",
    "打扰一下", "打扰了", "麻烦问一下", "麻烦问下", "麻烦一下", "请问一下", "请问下", "请问", "问一下", "问下",
    "咨询一下", "咨询下", "想咨询一下", "想问一下", "想问下", "我想问一下", "我想问下", "我想咨询一下", "我想咨询下",
    "我想问", "我想咨询", "想问", "咨询", "谢谢你", "谢谢", "感谢", "多谢", "thanks", "thank you", "thx", "好的呢",
    "好的", "好嘞", "好滴", "好", "ok", "okay", "嗯嗯", "嗯", "哦哦", "哦", "明白了", "明白", "知道了", "了解了",
    "收到", "辛苦了", "辛苦", "麻烦了", "麻烦你", "不好意思", "打扰", "那个", "就是", "还有个问题", "还有一个问题",
    "另外", "还有", "顺便问一下", "顺便问下", "顺便", "对了", "再问一下", "再问下", "再问", "然后",
)
_POLITE_RE = re.compile("|".join(re.escape(w) for w in sorted(set(_POLITE_WORDS), key=len, reverse=True)))
_FILLER = re.compile(r"[\s\W_啊呀哈嘛吧啦呢哦喔~～]+", re.UNICODE)
_LEAD = re.compile(r"^(?:(?:" + _POLITE_RE.pattern + r")[\s,，.。!！?？~～、…:：]*)+")
_CLAUSE_END = re.compile(r"(?<=[。！？!?；;\n])|(?<=[?？])")
_SOFT_SPLIT = re.compile(r"[，,\s]+(?=(?:另外|还有|顺便|对了|再问|以及|然后)[，,\s]*)")
_FOLLOW_START = re.compile(r"^(那|那么|还有|另外|如果|要是|那如果|那要是|那个)")
_FOLLOW_END = re.compile(r"(呢|吗|么|嘛)?[?？。.!！~～\s]*$")


def is_politeness(text):
    """True when the text is only greetings, thanks, acknowledgements and fillers."""
    rest = _POLITE_RE.sub("", normalize(text))
    return not _FILLER.sub("", rest)


def strip_politeness(text):
    """The question without the greeting or thanks in front ("在吗？我想退货" -> "我想退货").
    Text that is nothing but politeness is returned as it is."""
    t = text.strip()
    stripped = _LEAD.sub("", normalize(t)).strip()
    return stripped if _FILLER.sub("", stripped) else t


def clauses(text):
    """The message's questions: split at sentence ends and at "另外/还有/顺便…", politeness removed.
    A message with one question gives one clause."""
    parts = []
    for piece in _CLAUSE_END.split(text):
        parts += _SOFT_SPLIT.split(piece)
    out = []
    for p in parts:
        p = p.strip()
        if not p or is_politeness(p):
            continue
        out.append(strip_politeness(p))
    return out


def looks_like_follow_up(text):
    """Short and leaning on the previous turn: "那早餐呢", "收费吗", "要多久"."""
    t = normalize(text)
    core = compact(_FOLLOW_END.sub("", t))
    return bool(_FOLLOW_START.match(t)) and len(core) <= 10 or len(core) <= 4


_SWITCH = re.compile(r"^(?:那|那么|还有|另外|那如果|那要是)?(.{1,8}?)(?:呢|怎么样|如何|怎么算)[?？。.!！~～\s]*$")


def switches_topic(text):
    """"那早餐呢", "还有停车呢": the follow-up names a thing of its own and asks the same about it."""
    t = normalize(text)
    m = _SWITCH.match(t)
    return bool(m) and bool(_FILLER.sub("", m.group(1)))
