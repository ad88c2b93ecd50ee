"""Text normalization shared by every dialogue component."""
import re
import unicodedata

_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)

# Common shopper typos and chat spellings -> the word the knowledge base uses.
TYPOS = {
    "发漂": "发票", "开漂": "开票", "快第": "快递", "块递": "快递", "物留": "物流", "退宽": "退款", "退欵": "退款",
    "优会": "优惠", "尺吗": "尺码", "码子": "码数", "木有": "没有", "肿么": "怎么", "神马": "什么", "啥时候": "什么时候",
    "咋": "怎么", "滴": "的", "莫有": "没有", "3q": "谢谢", "thx": "谢谢", "nihao": "你好",
}


_TYPO_RE = re.compile("|".join(re.escape(w) for w in sorted(TYPOS, key=len, reverse=True)))


def normalize(text):
    """NFKC (full-width to half-width), lower case, single spaces, common typos fixed."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = _SPACE.sub(" ", text).strip()
    return _TYPO_RE.sub(lambda m: TYPOS[m.group()], text)


def compact(text):
    """Normalized text without spaces and punctuation."""
    return _PUNCT.sub("", normalize(text))
