"""Grounded generation: the local model rephrases an approved answer for the shopper's question.

The model never decides facts. Its output is checked by `guard()` and, when anything is off (empty,
an echo of the question, markup or links, too long, wrong language, a key fact of the approved answer
missing, a number the answer does not contain), the approved answer is sent as written. A hard time
budget stops generation and falls back the same way.

Prompting: a GGUF with its own chat template (instruction-tuned models) gets a system + user chat in
that template. The bundled Gemma-3-270m base model has none and repeats itself in chat mode, so it
gets a few-shot completion prompt whose fixed prefix stays in llama.cpp's KV cache between calls
(llama-cpp-python reuses the longest common token prefix of consecutive prompts).
"""
import dataclasses
import re
import time

from .textnorm import compact

FEW_SHOT = (
    "以下是网店微信客服的对话记录。客服只根据「知识库」回答，不编造信息，语气亲切，一句话说完。\n\n"
    "知识库：订单付款后48小时内发货，发货后可在「我的-订单」查看物流。\n"
    "顾客：我的东西怎么还没发\n"
    "客服：亲，订单付款后48小时内发货，发货后可在「我的-订单」查看物流哦。\n\n"
    "知识库：可以开具电子发票，开票后发送到您的预留邮箱。\n"
    "顾客：公司报销要发票\n"
    "客服：可以的，我们开电子发票，开票后发送到您的预留邮箱。\n\n"
    "知识库：签收后7天内支持无理由退货。\n"
    "顾客：不合适能退吗\n"
    "客服：可以的，签收后7天内支持无理由退货。\n\n"
)

_URL = re.compile(r"(https?://|www\.|\.com\b|\.cn\b)", re.I)
_MARKUP = re.compile(r"(<[a-zA-Z/][^>]*>|\*\*|```|^#|\[[^\]]*\]\()", re.M)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_QUOTED = re.compile(r"「([^」]+)」")
_CJK = re.compile(r"[\u4e00-\u9fff]")


QUESTION_CHARS = 200
"""Characters of the customer's message the model sees: any message fits the context."""


def _short(question):
    return " ".join(question.split())[:QUESTION_CHARS]


@dataclasses.dataclass(frozen=True)
class Generated:
    text: str | None         # the checked text, or None: send the approved answer
    reason: str              # "ok" or why it was rejected
    tokens: int = 0
    seconds: float = 0.0


def key_facts(answer):
    """Numbers and 「quoted」 names of the approved answer: what a rephrasing must keep."""
    return set(_NUMBER.findall(answer)) | set(_QUOTED.findall(answer))


def _bigrams(text):
    c = compact(text)
    return {c[i:i + 2] for i in range(len(c) - 1)}


def guard(text, question, answer, max_chars=50):
    """'ok', or the reason the generated text must not be sent."""
    t = (text or "").strip()
    if not t:
        return "empty"
    if _URL.search(t) or _MARKUP.search(t):
        return "markup"
    if len(t) > max_chars:
        return "too_long"
    if _CJK.search(answer) and len(_CJK.findall(t)) < len(t) * 0.5:
        return "language"
    q, g = _bigrams(question), _bigrams(t)
    if compact(t) == compact(question) or (q and len(q & g) / len(q | g) > 0.6):
        return "echo"
    quoted = set(_QUOTED.findall(answer))
    for fact in key_facts(answer):
        if fact in quoted:
            if fact not in t and compact(fact) not in compact(t):
                return "missing_fact"
        elif fact not in _NUMBER.findall(t):
            return "missing_fact"
    if set(_NUMBER.findall(t)) - set(_NUMBER.findall(answer)):
        return "invented_number"
    a = _bigrams(answer)
    if a and len(a & g) / len(a) < 0.3:
        return "ungrounded"
    return "ok"


class Generator:
    def __init__(self, llm, budget_seconds=1.5, max_chars=50, max_tokens=64, clock=time.monotonic):
        self.llm = llm
        self.budget = budget_seconds
        self.max_chars = max_chars
        self.max_tokens = max_tokens
        self.clock = clock
        meta = getattr(llm, "metadata", None) or {}
        self.chat = bool(meta.get("tokenizer.chat_template"))

    def prompt(self, question, answer):
        return f"{FEW_SHOT}知识库：{answer}\n顾客：{_short(question)}\n客服："

    def _stream(self, question, answer, persona):
        if self.chat:
            system = (persona or "你是网店的微信客服。") + "只根据知识库回答，不编造，一句话。"
            return self.llm.create_chat_completion(
                messages=[{"role": "system", "content": system},
                          {"role": "user", "content": f"知识库：{answer}\n顾客问题：{_short(question)}"}],
                max_tokens=self.max_tokens, temperature=0.0, stream=True), True
        return self.llm.create_completion(self.prompt(question, answer), max_tokens=self.max_tokens,
                                          temperature=0.0, stop=["\n", "顾客：", "知识库："], stream=True), False

    def phrase(self, question, answer, persona=""):
        """Rephrase `answer` for `question` within the time budget; always returns a Generated."""
        started = self.clock()
        pieces, tokens = [], 0
        stream, chat = self._stream(question, answer, persona)
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                pieces.append(choice.get("delta", {}).get("content", "") if chat else choice.get("text", ""))
                tokens += 1
                if self.clock() - started > self.budget:
                    return Generated(None, "time_budget", tokens, self.clock() - started)
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()
        text = "".join(pieces).strip().split("\n")[0].strip()
        verdict = guard(text, question, answer, self.max_chars)
        return Generated(text if verdict == "ok" else None, verdict, tokens, self.clock() - started)
