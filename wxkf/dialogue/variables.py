"""Live values in answers: `{{name}}` variables, service hours and the current promotion (issue 10).

Admins write them in the knowledge YAML:

    variables:
      hotline: 400-800-1234                      # a plain value
      promotion:                                 # valid between two dates (inclusive, shop time)
        value: 双11全场满300减50
        from: 2026-11-01
        until: 2026-11-11
        otherwise: 暂无优惠活动                    # optional: said outside the dates
    hours:                                       # when people answer: per weekday, HH:MM-HH:MM
      mon-fri: "09:00-18:00"
      sat: "10:00-16:00"
    timezone: Asia/Shanghai                      # the shop's clock (the default)
    promotion:                                   # one line added to these intents' answers while current
      text: "🎁 {{promotion}}"
      intents: [price, product_info]
    escalation:
      after_hours_reply: 现在是非工作时间，人工客服将在{{next_open}}回复您。

`{{service_hours}}` and `{{next_open}}` exist whenever `hours` is set. A variable outside its dates
with no `otherwise` is never sent raw: the line holding it is left out (and `wxkf kb check` reports it
so the admin updates it). Everything here is validated into plain data (kept in the last-good
snapshot) by `parse`; `render` and friends read that data with the shop's clock.
"""
import datetime as dt
import re

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
BUILT_IN = ("service_hours", "next_open")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_AFTER_HOURS = "现在是非工作时间（人工服务时间：{{service_hours}}），人工客服将在{{next_open}}回复您，请留言。"
_SPAN = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)")


def _zone(name):
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(name)
    except Exception:  # no tz database on this machine: China has one offset all year
        if name == DEFAULT_TIMEZONE:
            return dt.timezone(dt.timedelta(hours=8), "CST")
        raise


def _date(value):
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def _days(spec):
    """'mon-fri' / 'sat' / 'mon,wed' -> weekday indexes, or None."""
    out = []
    for part in str(spec).lower().replace("，", ",").split(","):
        part = part.strip()
        if "-" in part:
            a, _, b = part.partition("-")
            if a not in DAYS or b not in DAYS or DAYS.index(a) > DAYS.index(b):
                return None
            out += list(range(DAYS.index(a), DAYS.index(b) + 1))
        elif part in DAYS:
            out.append(DAYS.index(part))
        else:
            return None
    return out


def parse(doc, where, problems):
    """The live part of one knowledge file, validated: {"variables", "hours", "timezone", "promotion",
    "after_hours_reply"} with only what the file sets. Problems are appended as 'where: message'."""
    out = {}
    raw = doc.get("variables")
    if raw is not None:
        if not isinstance(raw, dict):
            problems.append(f"{where}: 「variables」必须是「名字: 值」的形式")
        else:
            out["variables"] = {}
            for name, spec in raw.items():
                if name == "__line__":
                    continue
                if not re.fullmatch(r"[a-z0-9_]+", str(name)) or name in BUILT_IN:
                    problems.append(f"{where}: 变量名「{name}」只能用小写字母、数字和下划线"
                                    + ("，且不能与内置变量同名" if name in BUILT_IN else ""))
                    continue
                var = _variable(name, spec, where, problems)
                if var is not None:
                    out["variables"][name] = var
    if doc.get("hours") is not None:
        hours = _hours(doc["hours"], where, problems)
        if hours is not None:
            out["hours"] = hours
    if doc.get("timezone") is not None:
        try:
            _zone(str(doc["timezone"]))
            out["timezone"] = str(doc["timezone"])
        except Exception:
            problems.append(f"{where}: 时区「{doc['timezone']}」不存在（例如 Asia/Shanghai）")
    promo = doc.get("promotion")
    if promo is not None:
        if not isinstance(promo, dict) or not isinstance(promo.get("text"), str) or not promo["text"].strip() \
                or not isinstance(promo.get("intents"), list) or not promo["intents"]:
            problems.append(f"{where}: 「promotion」需要 text（一行文字）和 intents（附加到哪些问题的回答）")
        else:
            out["promotion"] = {"text": promo["text"].strip(), "intents": [str(i) for i in promo["intents"]]}
    return out


def _variable(name, spec, where, problems):
    if isinstance(spec, (str, int, float)) and not isinstance(spec, bool):
        return {"value": str(spec)}
    if not isinstance(spec, dict) or not isinstance(spec.get("value"), (str, int, float)):
        problems.append(f"{where}: 变量「{name}」需要 value（可选 from、until、otherwise）")
        return None
    var = {"value": str(spec["value"])}
    for key in ("from", "until"):
        if spec.get(key) is not None:
            try:
                var[key] = _date(spec[key]).isoformat()
            except ValueError:
                problems.append(f"{where}: 变量「{name}」的 {key} 必须是日期，例如 2026-11-11")
                return None
    if "from" in var and "until" in var and var["from"] > var["until"]:
        problems.append(f"{where}: 变量「{name}」的 from 晚于 until")
        return None
    if spec.get("otherwise") is not None:
        var["otherwise"] = str(spec["otherwise"])
    unknown = set(spec) - {"value", "from", "until", "otherwise", "__line__"}
    if unknown:
        problems.append(f"{where}: 变量「{name}」中有未知的键「{'、'.join(sorted(unknown))}」（可用：value、from、until、otherwise）")
    return var


def _hours(spec, where, problems):
    if not isinstance(spec, dict):
        problems.append(f"{where}: 「hours」必须是「星期: 时间段」的形式，例如 mon-fri: \"09:00-18:00\"")
        return None
    week = {}
    for days, spans in spec.items():
        if days == "__line__":
            continue
        idx = _days(days)
        texts = spans if isinstance(spans, list) else [spans]
        parsed = [_SPAN.fullmatch(str(t).replace(" ", "")) for t in texts]
        if idx is None or not all(parsed):
            problems.append(f"{where}: hours 中「{days}: {spans}」看不懂：星期用 mon…sun（可写 mon-fri），"
                            f"时间写 \"09:00-18:00\"")
            return None
        for d in idx:
            week[DAYS[d]] = [m.group(0) for m in parsed]
    return week


def check_used(live, texts, today, problems):
    """Every `{{name}}` in the knowledge base's texts ([(where, text)]) is defined, and none used is
    past its `until` without an `otherwise`."""
    variables = live.get("variables", {})
    for where, text in texts:
        for name in PLACEHOLDER.findall(text or ""):
            if name in BUILT_IN:
                if "hours" not in live:
                    problems.append(f"{where}: 「{{{{{name}}}}}」需要先设置 hours（人工服务时间）")
                continue
            var = variables.get(name)
            if var is None:
                problems.append(f"{where}: 变量「{{{{{name}}}}}」没有定义（在 variables: 中添加）")
            elif "until" in var and var["until"] < today.isoformat() and "otherwise" not in var:
                problems.append(f"{where}: 变量「{{{{{name}}}}}」已于 {var['until']} 过期，请更新日期或删除它"
                                f"（在此之前含它的那一行不会发出）")


class Clock:
    """The shop's time, from the knowledge base's timezone."""

    def __init__(self, live, now=None):
        self.zone = _zone(live.get("timezone", DEFAULT_TIMEZONE))
        self.now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(self.zone)


def _current(var, today):
    return var.get("from", "0000") <= today.isoformat() <= var.get("until", "9999")


def describe_hours(week):
    """{'mon': ['09:00-18:00'], ...} -> '周一至周五 09:00-18:00，周六 10:00-16:00'."""
    groups, start = [], None
    for i, day in enumerate(DAYS + (None,)):
        spans = week.get(day) if day else None
        if start is not None and (spans != week.get(DAYS[start]) or day is None):
            end = i - 1
            name = DAY_NAMES[start] if end == start else f"{DAY_NAMES[start]}至{DAY_NAMES[end]}"
            groups.append(f"{name} {'、'.join(week[DAYS[start]])}")
            start = None
        if spans and start is None:
            start = i
    return "，".join(groups)


def open_now(week, now):
    """Whether people answer at `now` (the shop's local time)."""
    hm = now.strftime("%H:%M")
    return any(span[:5] <= hm < span[6:] for span in week.get(DAYS[now.weekday()], []))


def next_open(week, now):
    """When people next answer, in words: '今天 14:00', '明天 09:00', '周一 09:00'."""
    hm = now.strftime("%H:%M")
    for ahead in range(8):
        day = (now.weekday() + ahead) % 7
        for span in sorted(week.get(DAYS[day], [])):
            if ahead or span[:5] > hm:
                when = "今天" if ahead == 0 else "明天" if ahead == 1 else DAY_NAMES[day]
                return f"{when} {span[:5]}"
    return "上班后"


def render(text, live, now=None):
    """`text` with its variables filled in for now. A line whose variable is not current (and has no
    `otherwise`) is left out, so nothing is ever sent with braces in it."""
    if not text or "{{" not in text:
        return text
    clock = Clock(live, now)
    today = clock.now.date()
    variables = live.get("variables", {})
    week = live.get("hours")

    def value(name):
        if name == "service_hours" and week:
            return describe_hours(week)
        if name == "next_open" and week:
            return next_open(week, clock.now)
        var = variables.get(name)
        if var is None:
            return None
        return var["value"] if _current(var, today) else var.get("otherwise")

    lines = []
    for line in text.split("\n"):
        missing = False

        def fill(m):
            nonlocal missing
            got = value(m.group(1))
            if got is None:
                missing = True
                return ""
            return got
        rendered = PLACEHOLDER.sub(fill, line)
        if not missing:
            lines.append(rendered)
    return "\n".join(lines).strip()


def escalation_text(reply, live, now=None):
    """The escalation reply, or outside `hours` the after-hours one, which says when people answer."""
    week = live.get("hours")
    if week and not open_now(week, Clock(live, now).now):
        return render(live.get("after_hours_reply") or DEFAULT_AFTER_HOURS, live, now) or render(reply, live, now)
    return render(reply, live, now)


def with_promotion(text, intent_id, live, now=None):
    """`text` ending with the current promotion's line when `intent_id` is one it is for."""
    promo = live.get("promotion")
    if not text or not promo or intent_id not in promo["intents"]:
        return text
    line = render(promo["text"], live, now)
    return f"{text}\n{line}" if line else text
