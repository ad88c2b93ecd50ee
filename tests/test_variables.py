"""Live values in answers (issue 10, item 4): `{{variables}}` with dates, service hours and the
after-hours escalation reply, the current promotion; never sent raw, checked by `wxkf kb check`."""
import datetime as dt

import pytest
from click.testing import CliRunner

from wxkf.cli import main
from wxkf.dialogue import variables
from wxkf.dialogue.decision import Conversation, Message
from wxkf.dialogue.engine import DialogueEngine
from wxkf.dialogue.knowledge import KnowledgeStore, load
from wxkf.errors import KnowledgeError

SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def today(offset=0):
    return (dt.datetime.now(SHANGHAI).date() + dt.timedelta(days=offset)).isoformat()


def write(tmp_path, extra="", answer="满300减50，{{promotion}}"):
    (tmp_path / "shop.yaml").write_text(f"""
intents:
  - id: price
    title: 价格优惠
    examples: [这个多少钱, 有优惠吗, 价格是多少]
    answer: "{answer}"
  - id: invoice
    title: 开发票
    examples: [能开发票吗, 发票怎么开, 要发票]
    answer: 可以开电子发票，客服热线 {{{{hotline}}}}。
{extra}
""", encoding="utf-8")
    return tmp_path


BASE = """
variables:
  hotline: 400-800-1234
  promotion:
    value: 双11全场满300减50
    from: {start}
    until: {end}
"""


def test_render_fills_values_and_leaves_out_a_line_whose_value_is_not_current():
    live = {"variables": {"a": {"value": "甲"}, "gone": {"value": "旧活动", "until": "2020-01-01"},
                          "later": {"value": "新活动", "from": "2999-01-01", "otherwise": "暂无活动"}}}
    assert variables.render("你好{{ a }}", live) == "你好甲"
    assert variables.render("第一行\n活动：{{gone}}\n第三行", live) == "第一行\n第三行"  # never "{{gone}}"
    assert variables.render("活动：{{later}}", live) == "活动：暂无活动"


def test_an_unknown_or_expired_variable_is_a_kb_check_error(tmp_path):
    write(tmp_path, BASE.format(start=today(-30), end=today(-1)))
    with pytest.raises(KnowledgeError) as info:
        load(tmp_path)
    assert any("shop.yaml:" in p and "「{{promotion}}」已于" in p and "过期" in p for p in info.value.problems)
    write(tmp_path, "variables:\n  promotion: 双11\n")
    with pytest.raises(KnowledgeError) as info:
        load(tmp_path)
    assert any("「{{hotline}}」没有定义" in p for p in info.value.problems)
    result = CliRunner().invoke(main, ["kb", "check", str(tmp_path)])
    assert result.exit_code == 1 and "{{hotline}}" in result.output


@pytest.mark.parametrize("extra, says", [
    ("variables:\n  hotline: 1\n  promotion: {value: x, from: 2026-13-01}\n", "from 必须是日期"),
    ("variables:\n  hotline: 1\n  promotion: {value: x, from: 2026-12-01, until: 2026-11-01}\n", "from 晚于 until"),
    ("variables:\n  hotline: 1\n  promotion: x\nhours:\n  mon-fry: 09:00-18:00\n", "hours 中"),
    ("variables:\n  hotline: 1\n  promotion: x\nhours:\n  mon: 9点到6点\n", "hours 中"),
    ("variables:\n  hotline: 1\n  promotion: x\npromotion:\n  text: 活动\n  intents: [nope]\n", "「nope」不是已有的问题 id"),
    ("variables:\n  hotline: 1\n  promotion: x\n  next_open: y\n", "内置变量"),
    ("variables:\n  hotline: 1\n  promotion: x\ntimezone: Mars/Base\n", "时区"),
])
def test_bad_live_values_are_refused_with_the_file_and_line(tmp_path, extra, says):
    write(tmp_path, extra)
    with pytest.raises(KnowledgeError) as info:
        load(tmp_path)
    assert any(p.startswith(str(tmp_path / "shop.yaml") + ":") and says in p for p in info.value.problems), \
        info.value.problems


def test_service_hours_in_words_and_when_people_next_answer():
    week = {"mon": ["09:00-18:00"], "tue": ["09:00-18:00"], "wed": ["09:00-18:00"], "thu": ["09:00-18:00"],
            "fri": ["09:00-18:00"], "sat": ["10:00-16:00"]}
    assert variables.describe_hours(week) == "周一至周五 09:00-18:00，周六 10:00-16:00"
    friday_night = dt.datetime(2026, 11, 27, 20, 0, tzinfo=SHANGHAI)  # a Friday
    assert not variables.open_now(week, friday_night)
    assert variables.next_open(week, friday_night) == "明天 10:00"
    saturday_evening = dt.datetime(2026, 11, 28, 17, 0, tzinfo=SHANGHAI)
    assert variables.next_open(week, saturday_evening) == "周一 09:00"
    monday_early = dt.datetime(2026, 11, 30, 7, 30, tzinfo=SHANGHAI)
    assert variables.next_open(week, monday_early) == "今天 09:00"
    assert variables.open_now(week, dt.datetime(2026, 11, 30, 9, 0, tzinfo=SHANGHAI))


def engine_for(folder):
    return DialogueEngine(KnowledgeStore(folder))


def ask(engine, text):
    return engine.decide(Message(kind="text", text=text), Conversation("o_v"))


def test_answers_carry_current_values_and_the_promotion_only_while_it_runs(tmp_path):
    promo = "\npromotion:\n  text: 本周活动：{{promotion}}\n  intents: [price]\n"
    write(tmp_path, BASE.format(start=today(-1), end=today(1)) + promo, answer="具体价格见商品页。")
    engine = engine_for(tmp_path)
    invoice = ask(engine, "能开发票吗")
    assert invoice.text == "可以开电子发票，客服热线 400-800-1234。"  # no promotion on an invoice answer
    price = ask(engine, "这个多少钱")
    assert price.source == "knowledge" and price.text == "具体价格见商品页。\n本周活动：双11全场满300减50"
    # Before it starts, the promotion line is not said (and nothing with braces is).
    write(tmp_path, BASE.format(start=today(2), end=today(9)) + promo, answer="具体价格见商品页。")
    later = ask(engine_for(tmp_path), "这个多少钱")
    assert later.text == "具体价格见商品页。"


def test_outside_service_hours_the_escalation_says_when_people_answer(tmp_path):
    other_day = variables.DAYS[(dt.datetime.now(SHANGHAI).weekday() + 2) % 7]
    write(tmp_path, "variables:\n  hotline: 1\n  promotion: x\n"
                    f"hours:\n  {other_day}: \"09:00-18:00\"\n")
    escalated = ask(engine_for(tmp_path), "转人工")
    assert escalated.source == "escalate"
    assert "非工作时间" in escalated.text and f"{variables.DAY_NAMES[variables.DAYS.index(other_day)]} 09:00" in escalated.text
    assert "{{" not in escalated.text
    write(tmp_path, "variables:\n  hotline: 1\n  promotion: x\nhours:\n  mon-sun: \"00:00-24:00\"\n"
                    "escalation:\n  reply: 已为您转接人工客服。\n  after_hours_reply: 下班了，{{next_open}}回复您。\n")
    assert ask(engine_for(tmp_path), "转人工").text == "已为您转接人工客服。"  # within hours


def test_the_console_shows_the_answer_as_it_is_sent(svc, client, tmp_path):
    import dataclasses
    import re
    from wxkf import create_app
    from wxkf.agents.accounts import Accounts
    write(tmp_path, BASE.format(start=today(-1), end=today(1)))
    svc.config = dataclasses.replace(svc.config, knowledge=str(tmp_path))
    svc.reload_knowledge()
    app = create_app(services=svc)
    c = app.test_client()
    Accounts(svc.redis).add("root", "admin", "battery staple")
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/console/login").get_data(as_text=True)).group(1)
    c.post("/console/login", data={"name": "root", "password": "battery staple", "csrf_token": token})
    page = c.get("/console/kb").get_data(as_text=True)
    assert "发送时：满300减50，双11全场满300减50" in page and "发送时：可以开电子发票，客服热线 400-800-1234。" in page
