"""The dialogue engine's decisions over a conversation, and conversation state in Redis."""
import json
import shutil
from pathlib import Path

import pytest

from wxkf import keys
from wxkf.dialogue.conversation import ConversationStore
from wxkf.dialogue.decision import Action, Conversation, Message
from wxkf.dialogue.engine import DialogueEngine
from wxkf.dialogue.knowledge import KnowledgeStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def llm():
    from wxkf import config as config_mod
    from wxkf.dialogue import model
    return model.load(config_mod.load(env={}).model_path)


@pytest.fixture(scope="module")
def engine(llm):
    """The default configuration: the model reads what the words leave unsure."""
    return DialogueEngine(KnowledgeStore(ROOT / "knowledge"), llm=llm).warm_up()


def say(engine, convo, text):
    return engine.decide(Message(kind="text", text=text), convo)


def test_confident_question_gets_the_approved_answer(engine):
    d = say(engine, Conversation("o"), "东西什么时候能到")
    assert d.action == Action.REPLY and d.source == "knowledge" and d.intent == "logistics"
    assert d.text == engine.classifier().kb.intent("logistics").answer


def test_ambiguous_question_offers_numbered_suggestions_and_a_pick_answers(engine):
    convo = Conversation("o")
    d = say(engine, convo, "订单的事情")
    assert d.source == "suggest" and "1. " in d.text and "2. " in d.text
    assert set(d.suggestions) >= {"cancel_order", "logistics"}
    pick = d.suggestions.index("logistics") + 1
    answer = say(engine, convo, str(pick))
    assert answer.intent == "logistics" and answer.reason == "suggestion_picked"
    assert convo.pending == []


def test_a_number_without_pending_suggestions_is_not_a_pick(engine):
    d = say(engine, Conversation("o"), "2")
    assert d.reason != "suggestion_picked"


def test_follow_up_uses_the_previous_turn(engine):
    convo = Conversation("o")
    say(engine, convo, "发票怎么开")
    assert say(engine, convo, "要多久").intent == "invoice"
    convo = Conversation("o")
    say(engine, convo, "我的快递到哪了")
    assert say(engine, convo, "那发票呢").intent == "invoice"


def test_unrelated_question_falls_back(engine):
    d = say(engine, Conversation("o"), "今天天气怎么样")
    assert d.source == "fallback" and d.intent is None
    assert d.text == engine.classifier().kb.fallback


def test_two_fallbacks_then_escalation(engine):
    convo = Conversation("o")
    assert say(engine, convo, "今天天气怎么样").source == "fallback"
    assert say(engine, convo, "你们老板是谁").source == "fallback"
    d = say(engine, convo, "给我讲个笑话")
    assert d.action == Action.ESCALATE and d.reason == "repeated_failure"


def test_repeating_the_question_escalates(engine):
    convo = Conversation("o")
    say(engine, convo, "钱都扣了订单还是未付款")
    d = say(engine, convo, "钱都扣了 订单还是未付款！")
    assert d.action == Action.ESCALATE and d.reason == "repeated_failure"


def test_escalation_carries_reason_priority_and_the_shops_reply(engine):
    d = say(engine, Conversation("o"), "气死我了 东西坏了还不给退")
    assert d.action == Action.ESCALATE and d.reason == "anger" and d.priority > 0
    assert d.text == engine.classifier().kb.escalation_reply


def test_welcome_and_canned_replies(engine):
    kb = engine.classifier().kb
    assert engine.decide(Message(kind="event", event="user_enter_tempsession"), Conversation("o")).text == kb.welcome
    card = engine.decide(Message(kind="miniprogrampage", title="蓝色卫衣"), Conversation("o"))
    assert "蓝色卫衣" in card.text and card.source == "canned"
    assert engine.decide(Message(kind="event", event="kf_close_session"), Conversation("o")).action == Action.SILENT


def test_a_broken_knowledge_edit_keeps_the_previous_answers(tmp_path):
    shutil.copytree(ROOT / "knowledge", tmp_path / "kb")
    engine = DialogueEngine(KnowledgeStore(tmp_path / "kb", interval=0))
    assert say(engine, Conversation("o"), "发票怎么开").intent == "invoice"
    (tmp_path / "kb" / "aftersale.yaml").write_text("intents:\n  - id: [broken\n")
    assert say(engine, Conversation("o"), "发票怎么开").intent == "invoice"
    assert engine.store.last_error is not None


def test_conversation_state_round_trips_through_redis_with_idle_expiry(r, engine):
    store = ConversationStore(r)
    convo = store.load("o_state")
    d = say(engine, convo, "订单的事情")
    store.save(convo)
    again = store.load("o_state")
    assert again.pending == list(d.suggestions)
    assert again.turns[0] == {"role": "user", "text": "订单的事情", "intent": d.intent}
    assert 7000 < r.ttl(keys.conversation("o_state")) <= 7200
    for i in range(12):
        say(engine, again, f"问题{i}")
    store.save(again)
    assert len(store.load("o_state").turns) == 10  # the last 5 exchanges
    assert len(r.get(keys.conversation("o_state")).encode()) < 1024
    json.loads(r.get(keys.conversation("o_state")))


# -- messages as customers write them ---------------------------------------------------------------
HOTEL = ROOT / "tests" / "eval" / "trades" / "hotel" / "knowledge"


@pytest.fixture(scope="module")
def hotel(llm):
    return DialogueEngine(KnowledgeStore(HOTEL), llm=llm).warm_up()


@pytest.mark.parametrize("text, intent", [
    ("在吗？我想退货", "refund"),
    ("你好，请问能寄到美国吗", "overseas"),
    ("好的谢谢 另外发票怎么开", "invoice"),
    ("亲 在吗 发票怎么开呀", "invoice"),
])
def test_a_greeting_or_thanks_in_front_answers_the_question(engine, text, intent):
    d = say(engine, Conversation("o"), text)
    assert d.source == "knowledge" and d.intent == intent


def test_two_questions_in_one_message_are_both_answered(hotel):
    kb = hotel.understanding().kb
    d = say(hotel, Conversation("o"), "几点退房？早餐几点开始")
    assert d.answered == ("checkout_time", "breakfast")
    assert kb.intent("checkout_time").answer in d.text and kb.intent("breakfast").answer in d.text


def test_a_follow_up_naming_a_new_topic_gets_that_topic_not_the_previous_answer(hotel):
    convo = Conversation("o")
    assert say(hotel, convo, "几点退房").intent == "checkout_time"
    d = say(hotel, convo, "那早餐呢")
    assert d.intent == "breakfast" and d.source == "knowledge"


def test_politeness_alone_gets_a_courtesy_not_an_intent(hotel):
    kb = hotel.understanding().kb
    assert say(hotel, Conversation("o"), "你好").text == kb.welcome
    thanks = say(hotel, Conversation("o"), "好的谢谢")
    assert thanks.text == kb.thanks and thanks.source == "canned"


def test_an_unsure_reading_is_offered_never_answered(hotel):
    for text in ("有停车场吗", "附近有什么好玩的", "你们是几星级"):
        d = say(hotel, Conversation("o"), text)
        assert d.source in ("fallback", "suggest"), (text, d)
        assert not d.answered


def test_the_default_fallback_promises_no_person_and_shows_the_way_to_one(tmp_path):
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "a.yaml").write_text(
        "intents:\n  - id: hours\n    title: 营业时间\n    examples: [几点开门]\n    answer: 每天9:00-21:00。\n")
    engine = DialogueEngine(KnowledgeStore(tmp_path / "kb")).warm_up()
    d = say(engine, Conversation("o"), "你们老板叫什么名字")
    assert d.source == "fallback" and "转人工" in d.text
    assert "会尽快回复" not in d.text and "已为您记录" not in d.text
