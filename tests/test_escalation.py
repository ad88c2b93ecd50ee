"""Escalation: recall on real escalations, restraint on look-alikes, reasons and priorities."""
from pathlib import Path

import pytest

from wxkf.dialogue.escalation import PRIORITY, detect
from wxkf.dialogue.evaluate import read_cases
from wxkf.dialogue.knowledge import load

ROOT = Path(__file__).resolve().parent.parent
KB = load(ROOT / "knowledge")
CASES = read_cases(ROOT / "tests" / "eval" / "escalation.tsv")


def test_recall_on_escalations_is_at_least_95_percent():
    positives = [(label, text) for label, text in CASES if label != "no"]
    assert len(positives) >= 50
    caught = [detect(text, KB.escalation_keywords) for _, text in positives]
    assert sum(e is not None for e in caught) / len(positives) >= 0.95
    right_reason = sum(e is not None and e.reason == label for e, (label, _) in zip(caught, positives))
    assert right_reason / len(positives) >= 0.9


def test_lookalikes_are_not_escalated():
    lookalikes = [text for label, text in CASES if label == "no"]
    assert len(lookalikes) >= 20
    escalated = [t for t in lookalikes if detect(t, KB.escalation_keywords)]
    assert len(escalated) <= len(lookalikes) / 20, escalated


@pytest.mark.parametrize("text", ["不急 慢慢来", "我不投诉 就问问", "紧身裤", "人工智能客服你好", "急救包"])
def test_the_issues_lookalikes(text):
    assert detect(text, KB.escalation_keywords) is None


def test_priority_urgent_over_complaint_over_request():
    e = detect("转人工！孩子吃了过敏了 我要投诉", KB.escalation_keywords)
    assert e.reason == "urgent" and e.priority == PRIORITY["urgent"]
    assert detect("我要投诉 转人工", KB.escalation_keywords).reason == "complaint"
    assert PRIORITY["urgent"] > PRIORITY["complaint"] > PRIORITY["request"]


def test_shop_keywords_extend_complaints():
    assert detect("我要去黑猫投诉平台", ()) is not None  # 投诉 is built in
    assert detect("再这样我就找媒体", ()) is None
    assert detect("再这样我就找媒体", ("找媒体",)).reason == "complaint"


def test_two_fallbacks_in_a_row_escalate():
    history = [{"role": "user", "text": "a"}, {"role": "bot", "source": "fallback"},
               {"role": "user", "text": "b"}, {"role": "bot", "source": "fallback"}]
    e = detect("那怎么办", KB.escalation_keywords, history)
    assert e is not None and e.reason == "repeated_failure"
    assert detect("那怎么办", KB.escalation_keywords, history[:2]) is None
