"""Escalation detection: who needs a human, why, and how soon.

Rules over normalized text, each category with its own cue words; a cue does not count when it is
negated just before ("不急", "我不投诉", "不用转人工") or when it is only part of a harmless
look-alike word ("紧身裤", "人工智能", "急救包", "报警器"). Shops add complaint words in the knowledge
base (`escalation.keywords`). Repeated failure (the bot fell back twice in a row, or the shopper asks
the same thing again after a non-answer) escalates too, from the conversation state.

Priority: urgent > complaint > anger > request > repeated failure.

Rules alone catch about half the escalations of a trade they were not written on (docs/dialogue.md):
"我妈洗头的时候突然头晕 现在靠在椅子上叫不醒" has no cue word. The worker's engine therefore also
asks the `Reader`: a logistic regression over the local model's reading of the message (its hidden
states, `ModelScorer.read`), fitted on the labelled escalations of many trades (bench/fit_escalation.py).
It says whether a message needs a human and why, with no word list.
"""
import dataclasses
import functools
import logging
import re
from pathlib import Path

from .textnorm import normalize

log = logging.getLogger("wxkf.escalation")

PRIORITY = {"urgent": 4, "complaint": 3, "anger": 2, "request": 1, "repeated_failure": 1}

CUES = {
    "request": ("转人工", "人工客服", "人工服务", "找人工", "叫人工", "要人工", "接人工", "真人客服", "找真人",
                "要真人", "给我真人", "跟真人", "和真人", "活人", "客服人员", "叫你们经理", "找你们经理",
                "找你们领导", "人工回复", "人工来", "转接人工", "联系人工", "不要机器人", "别让机器人"),
    "complaint": ("投诉", "12315", "12345", "骗人", "骗子", "诈骗", "骗钱", "欺诈", "差评", "报警", "起诉", "律师",
                  "消协", "消费者协会", "工商局", "举报", "曝光", "虚假宣传", "维权", "给个说法", "给我个说法"),
    "urgent": ("紧急", "很急", "急用", "着急", "急急", "急死", "十万火急", "马上要", "马上就要", "今天必须",
               "立刻", "赶紧", "发霉", "霉变", "肚子疼", "肚子痛", "拉肚子", "腹泻",
               "呕吐", "中毒", "食物中毒", "冒烟", "起火", "着火", "爆炸", "漏电", "触电", "烫伤", "受伤", "流血",
               "危险"),
    "anger": ("气死", "垃圾", "什么破", "破服务", "恶心", "无语", "坑人", "坑爹", "什么玩意", "烦死", "太过分",
              "服了", "什么态度", "会不会做生意", "滚", "妈的", "tmd", "fuck", "shit", "智障", "废物"),
}

# Cues that need a pattern rather than a word, the same in every trade: who is asked for, what was done.
_STAFF = r"(?:店长|经理|老板|负责人|领导|主管|管理层|管事的|上级|值班经理|老板娘|院长|校长)"
_WORKER = r"(?:前台|服务员|店员|员工|工作人员|老师|医生|护士|师傅|保洁|阿姨|骑手|外卖员|快递员|客服|司机|技师|教练|美容师|理发师)"
PATTERNS = {
    "request": (
        r"(?:叫|找|让|请|要|喊|把|换|转给?|联系|接|给我接)(?:一下)?(?:你们|你家|贵店|店里|今晚|现在)?(?:的)?(?:值班的?)?(?:技术|营业厅|门店)?" + _STAFF,
        _STAFF + r"(?:在吗|在不在|呢|出来|过来|来|给我|跟我|和我|联系我|打电话|回电话|电话|谈)",
        r"(?:给|跟|和)我(?:打|回)(?:个)?电话", r"(?:请|麻烦|赶紧|马上|尽快|能|可以|快)(?:.{0,3})(?:打|回)(?:个)?(?:电话)?给我", r"(?:找|要|跟|和|让)(?:个|一个)?(?:人|真人|活人)(?:说|聊|来|处理)",
        r"(?:跟|和|找)人(?:说话|沟通|谈)", r"能做主的", r"(?:当面|本人)(?:跟|和|说|谈)", r"(?:不要|别|不想)(?:跟|和)?(?:机器|自动回复|机器人)",
        r"(?:机器|机器人)(?:说不明白|听不懂|答不了|没用)", r"人工(?:马上|赶紧|尽快|快)?(?:联系|打|回|处理)", r"找(?:个)?真人",
        r"(?:帮我|给我)?转(?:一下|个)?(?:人工|真人|客服)", r"(?:马上|现在|立刻)(?:打给我|联系我|回我电话)",
    ),
    "complaint": (
        r"态度(?:太|很|非常|特别|真|极其|也太|好|超|巨)?(?:差|恶劣|不好|差劲|冷漠|敷衍|傲慢|蛮横|凶)",
        _WORKER + r".{0,6}(?:骂|吼|凶|甩脸|不理|爱答不理|敷衍|推卸|辱骂|态度)",
        r"(?:扣|付|收|刷|划|交)了?(?:我)?(?:两|2|二|双|三|3)(?:次|遍|笔|回|份)(?:钱|款|费)?",
        r"(?:重复|多|乱|错)(?:扣|收)(?:款|费|钱|了)?", r"莫名(?:其妙)?(?:扣|收)",
        r"(?:吃出|里面有|里有|发现)(?:了)?(?:一根|一只|一个|个|根|只)?(?:头发|虫|苍蝇|蟑螂|异物|钢丝|铁丝|塑料|玻璃|老鼠)",
        r"(?:变质|馊了|发臭|臭了|不新鲜|有异味)",
        r"(?:发|上|找)(?:到)?(?:抖音|微博|小红书|朋友圈|大众点评|点评|媒体|记者|电视台|网上)",
        r"(?:市场监管|监管局|卫生局|卫健委|食药监|教育局|消协|工商)", r"(?:赔偿|索赔|赔钱|退一赔三|假一赔十|赔我)",
        r"(?:讨|给|要)(?:个|一个)?说法", r"(?:虚假|欺骗|忽悠|霸王条款|乱收费|黑店)",
        r"(?:说好|承诺|答应|保证)(?:的|了)?.{0,14}(?:结果|现在|却|怎么|又|还|居然|竟然|一看)",
        r"(?:必须|得|要|给我)(?:全)?(?:赔|负责|退钱|退还|还我)", r"钱得还", r"(?:挂出来|挂到网上|曝光|申诉|工信部|家长群)",
        r"(?:没经|未经)(?:过)?我(?:的)?同意", r"偷钱", r"(?:骗我|被骗|上当)", r"(?:素质|翻白眼|连句对不起|一句道歉)",
        r"(?:全凉了|洒了一半|洒了|等了.{0,4}(?:小时|个钟))", r"根本没(?:换|洗|打扫|处理|人管)", r"(?:上吐下泻|吐了一晚)",
        r"(?:不见了|丢了|被偷)(?:.{0,6}(?:只有|就|保洁|服务员|员工))", r"(?:明明|居然|竟然).{0,12}(?:又|还|却|给我)",
        r"(?:弄坏|弄脏|弄我|打坏|搞坏|磨坏|刮花|打了个(?:大)?洞)", r"(?:掉了|坏了|没过).{0,6}(?:负责|赔|退钱|还我)",
        r"(?:收|扣)(?:了)?两次", r"(?:一看|却|结果)(?:扣|收)了",
    ),
    "urgent": (
        r"(?:晕倒|昏倒|昏迷|晕过去|休克|抽搐|不省人事|喘不上气|呼吸困难|心脏病|中风|发病)",
        r"(?:摔伤|摔倒|摔了|跌倒|受伤|流血|出血|骨折|烫伤|烧伤|割伤|划伤|砸伤|咬伤|扭伤)",
        r"(?:救护车|叫120|打120|急救|送医院|送医|进医院|住院了)",
        r"(?:高烧|发烧到|烧到39|烧到40|疼得受不了|痛得受不了|疼得厉害|痛得厉害|肿得厉害|止不住)",
        r"过敏(?:了|反应|得|严重)", r"(?:起疹子了|起红疹了|全身(?:红|起疹)|喉咙肿)",
        r"(?:吃|喝|用)(?:了|完)?.{0,8}(?:拉肚子|吐了|呕吐|腹泻|肚子疼|肚子痛|不舒服|中毒)",
        r"(?:被困|困在|关在)(?:电梯|房间|里面)", r"(?:着火|起火|失火|冒烟|火灾|煤气|燃气泄漏|漏气|爆炸|漏电|触电)",
        r"(?:走丢|不见了|丢了|找不到)(?:了)?(?:孩子|小孩|老人)|(?:孩子|小孩|老人)(?:走丢|不见了|丢了|找不到)",
        r"(?:有人|被人)(?:闯|打|骚扰|跟踪|偷)", r"(?:被盗|失窃|小偷|被偷)",
        r"(?:水管爆|爆管|淹了|漏水(?:严重|很大|到楼下))",
        r"(?:哮喘|说不出话|抬不起来|口吐白沫|没有意识|没意识|喘不过气|晕了|吐血|血(?:还|一直)?(?:往外冒|止不住|流个不停)|流了好多血)",
        r"(?:敲我(?:房)?门|拧门|撬门|跟着我|尾随|陌生(?:男|女)?人?.{0,8}(?:接|带|跟|敲|进))", r"(?:我很害怕|好害怕|吓死了)",
        r"(?:电梯)?卡在.{0,6}(?:中间|里面)", r"(?:联系不上|打不通|还没(?:到家|回来|回家))", r"(?:烫红|烫伤|烧伤|割到|磕到|磕破)",
        r"(?:摔下来|摔了下来|掉下来|砸到)", r"(?:异地登录|被盗|盗号|被人登录)", r"(?:已经转了|让我转账|被骗了?\d+)",
        r"(?:横在|挡在)(?:马路|路)", r"(?:快帮|赶紧帮|马上帮|快来|快拿)",
    ),
    "anger": (
        r"(?:什么破|垃圾|坑人|坑钱|坑爹|无语|太过分|欺负人|寒心|失望透顶|恶心|气死|火大|受够了|忍无可忍|奇葩|离谱)",
        r"(?:有病吧|脑子有病|傻逼|傻b|sb|他妈|tmd|特么|尼玛|妈的|卧槽|我靠|滚|废物|智障|骗子|白痴)",
        r"(?:再也不来|再也不会来|再也不用|拉黑|什么鬼|搞什么|到底行不行|能不能靠谱|靠不靠谱啊|一次比一次差)",
        r"(?:庸医|是猪|猪吗|脑子有问题|脑子进水|吸血鬼|不得好|有病|破玩意|老子|你大爷|混蛋|王八|狗屁|去死|骗子公司)",
    ),
}

LOOKALIKES = ("人工智能", "人工费", "急救包", "急救箱", "报警器", "紧身", "紧急联系人", "真人秀", "骗子多",
              "差评返现", "气垫", "垃圾袋", "垃圾桶", "垃圾分类", "过敏体质", "发霉的话", "马上就到", "投诉建议",
              "投诉电话", "投诉邮箱", "投诉渠道", "投诉方式", "怎么投诉", "急诊", "急性", "急性子", "经理推荐",
              "店长推荐", "老板推荐", "老师推荐", "医生推荐", "急救知识", "救护", "防火", "消防", "不新鲜吗",
              "会不会过敏", "会过敏吗", "易过敏", "过敏的人", "过敏人群", "过敏的话", "对什么过敏", "诈骗电话",
              "骚扰电话", "诈骗短信", "推销电话", "新不新鲜", "老出血", "经常出血", "容易出血", "总出血")

# A cue preceded by one of these (optionally with 很/太/是/要/用) is negated: 不急, 我不投诉, 不用转人工.
NEGATION = re.compile(r"(不|没|別|别|无需|不用|不想|不要|没有|不是|并不|不必)[^，。,.!！?？\s]{0,3}$")

# A sentence that defuses itself: "不严重", "已经好了", "哈哈", "其实也不急". Urgency, complaint and
# anger cues in it do not escalate (an explicit request for a person still does).
DEFUSERS = re.compile(r"(不严重|没大事|没什么大事|已经好了|已经没事|处理好了|解决了|不用帮忙|不需要帮忙|哈哈|hhh|开玩笑|"
                      r"以为|原来是|其实也不急|其实不急|也不急|不着急|不急|不紧急|不是什么紧急|没事了|虚惊)")

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
        alternatives = [re.escape(w) for w in sorted(set(words), key=len, reverse=True) if w]
        out[reason] = re.compile("|".join(alternatives + list(PATTERNS.get(reason, ()))))
    return out


_A_NOT_A = re.compile(r"(有没有|是不是|要不要|能不能|可不可以|会不会|用不用)$")


def _negated(text, at):
    before = text[max(0, at - 6):at]
    return bool(NEGATION.search(before)) and not _A_NOT_A.search(before)


def detect(text, extra_complaint_words=(), history=None, skip=()):
    """The strongest escalation in `text`, or None.

    `history`: the conversation's recent turns (dicts with "source" and "text"), newest last,
    for repeated-failure detection. `skip`: reasons not to look for (those the reader overruled).
    """
    t = _mask_lookalikes(normalize(text))
    defused = bool(DEFUSERS.search(t))
    found = []
    for reason, pattern in _patterns(tuple(extra_complaint_words)).items():
        if (defused and reason != "request") or reason in skip:
            continue
        for m in pattern.finditer(t):
            if not _negated(t, m.start()):
                found.append(Escalation(reason, PRIORITY[reason], m.group()))
                break
    if t.strip() in ("人工", "真人", "客服", "人工客服"):
        found.append(Escalation("request", PRIORITY["request"], t.strip()))
    if _EXCLAIM.search(text) and not found and not defused and "anger" not in skip:
        found.append(Escalation("anger", PRIORITY["anger"], "!!!"))
    if not found and history:
        bot_turns = [h for h in history if h.get("role") == "bot"]
        if len(bot_turns) >= 2 and all(h.get("source") == "fallback" for h in bot_turns[-2:]):
            found.append(Escalation("repeated_failure", PRIORITY["repeated_failure"], "two fallbacks in a row"))
    if not found:
        return None
    return max(found, key=lambda e: e.priority)


READER_WEIGHTS = Path(__file__).with_name("escalation-reader.npz")

READER_AT = 0.8
"""The reader escalates when P(a human is needed) >= this (bench/fit_escalation.py: leave-one-trade-out,
the level where look-alikes and ordinary questions stay at about one in a trade)."""

VETO_AT = 0.9
"""A complaint or anger cue word does not escalate a message the reader reads as calm with P(none) >= this
("差评是不可能差评的", "好吃到想投诉自己"). Urgency cues keep the last word (a missed emergency costs more
than an agent reading a calm message), and so does an explicit request for a person."""

VETOABLE = ("complaint", "anger")


class Reader:
    """P(escalation reason | the model's reading of the message), for the model it was fitted on."""

    REASONS = ("none", "request", "complaint", "urgent", "anger")

    def __init__(self, weights, bias, mean, scale, threshold=READER_AT):
        self.weights, self.bias, self.mean, self.scale = weights, bias, mean, scale
        self.threshold = threshold

    @classmethod
    def for_model(cls, llm, path=READER_WEIGHTS):
        """The shipped reader if it was fitted on this model, else None (rules alone: the hidden
        states of another GGUF mean something else)."""
        import numpy as np
        if not Path(path).exists():
            return None
        data = np.load(path)
        name = str(data["model"])
        mine = model_identity(llm)
        if name != mine:
            log.info("escalation reader fitted on %s, not %s: escalation by rules only", name, mine)
            return None
        return cls(data["weights"], data["bias"], data["mean"], data["scale"])

    def probabilities(self, hidden):
        import numpy as np
        z = ((hidden - self.mean) / self.scale) @ self.weights + self.bias
        p = np.exp(z - z.max())
        return p / p.sum()

    def calm(self, hidden):
        """Whether the reading is sure no human is needed: enough to overrule a complaint or anger cue."""
        return hidden is not None and float(self.probabilities(hidden)[0]) >= VETO_AT

    def detect(self, hidden):
        """An Escalation when the message needs a human, else None."""
        if hidden is None:
            return None
        p = self.probabilities(hidden)
        if 1.0 - p[0] < self.threshold:
            return None
        reason = self.REASONS[1 + int(p[1:].argmax())]
        return Escalation(reason, PRIORITY[reason], f"reader {1.0 - p[0]:.2f}")


def model_identity(llm):
    """What identifies the model the reader's weights belong to: its name, size and width."""
    import llama_cpp
    meta = getattr(llm, "metadata", None) or {}
    return (f"{meta.get('general.name', '?')}/{llama_cpp.llama_model_n_params(llm.model)}"
            f"/{llama_cpp.llama_model_n_embd(llm.model)}")


def defused(text):
    """The message defuses itself ("不严重", "哈哈", "其实不急"): no cue or reading escalates it."""
    return bool(DEFUSERS.search(_mask_lookalikes(normalize(text))))
