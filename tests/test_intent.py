"""Intent classification quality on held-out shopper messages (the CI quality gate)."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from wxkf.cli import main
from wxkf.dialogue.evaluate import evaluate, read_cases
from wxkf.dialogue.intent import IntentClassifier
from wxkf.dialogue.knowledge import load

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "tests" / "eval"
SHOP = EVAL / "trades" / "shop" / "cases.tsv"


def shop_cases():
    return [(label, text) for label, text in read_cases(SHOP) if ":" not in label]


@pytest.fixture(scope="module")
def clf():
    return IntentClassifier(load(ROOT / "knowledge"))


def predict_with(clf, answer_at=0.55):
    def predict(text):
        top = clf.rank(text)[0]
        return top.intent_id, (top.intent_id if top.confidence >= answer_at else None)
    return predict


def test_top1_accuracy_on_held_out_messages_is_at_least_90_percent(clf):
    """The demo shop with its e-commerce vocabulary pack: the lexical stage alone."""
    cases = shop_cases()
    assert len(cases) >= 450
    report = evaluate(cases, predict_with(clf))
    assert report["top1_accuracy"] >= 0.90, report["misses"]
    # Direct answers (no suggestion step) must be right almost always.
    assert report["answered_precision"] >= 0.95


def test_evaluation_sets_hold_no_knowledge_examples():
    kb = load(ROOT / "knowledge")
    examples = {e for i in kb.intents for e in i.examples}
    texts = [t for _, t in shop_cases()]
    assert len(texts) >= 450
    assert not examples & set(texts)


def test_confidence_is_calibrated(clf):
    """Expected calibration error over both sets: confidence ~ the chance the top intent is right."""
    rows = []
    for label, text in shop_cases():
        top = clf.rank(text)[0]
        rows.append((top.confidence, label == top.intent_id))
    ece = 0.0
    for lo in [i / 10 for i in range(10)]:
        b = [(c, ok) for c, ok in rows if lo <= c < lo + 0.1 or (lo == 0.9 and c >= 1.0)]
        if b:
            ece += len(b) / len(rows) * abs(sum(c for c, _ in b) / len(b) - sum(ok for _, ok in b) / len(b))
    assert ece <= 0.08


@pytest.mark.parametrize("text, intent", [
    ("我昨天下单的那个蓝色卫衣怎么还没发货呀", "logistics"),
    ("这件T恤 size M 能发到泰国吗?", "overseas"),
    ("钱扣了 订单却显示没付款", "payment"),
    ("发漂怎么开", "invoice"),              # typo
    ("能开invoice吗", "invoice"),            # mixed Chinese/English
    ("订单号20231105889 到哪了", "logistics"),  # numbers
    ("我170 65kg穿什么码", "size_advice"),
])
def test_colloquial_messages(clf, text, intent):
    ranked = clf.rank(text)
    assert ranked[0].intent_id == intent
    assert 0.0 <= ranked[1].confidence <= ranked[0].confidence <= 1.0


def test_admin_synonyms_teach_new_words(tmp_path):
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    (kb_dir / "a.yaml").write_text(
        "intents:\n"
        "  - id: membership\n    title: 会员卡\n    examples: [会员卡怎么办理, 怎么成为会员]\n    answer: 在「我的-会员」免费开通。\n"
        "  - id: logistics\n    title: 物流\n    examples: [快递到哪了]\n    answer: 48小时内发货。\n")
    before = IntentClassifier(load(kb_dir)).rank("我想办张黑卡")[0]
    (kb_dir / "b.yaml").write_text("synonyms:\n  - [会员卡, 黑卡, vip卡]\n")
    after = IntentClassifier(load(kb_dir)).rank("我想办张黑卡")[0]
    assert after.intent_id == "membership" and after.confidence > before.confidence


def test_wxkf_eval_gates_quality():
    runner = CliRunner()
    ok = runner.invoke(main, ["eval", "--no-misses", "--min-accuracy", "0.9", str(SHOP)])
    assert ok.exit_code == 0, ok.output
    assert "top-1 accuracy" in ok.output and "confusion" in ok.output and "logistics" in ok.output



def test_wxkf_eval_exits_1_below_the_gate(tmp_path):
    """The gate's other side, on a small file with one message labelled with the wrong intent."""
    cases = tmp_path / "cases.tsv"
    cases.write_text("logistics\t我的快递到哪了\ninvoice\t发票怎么开\nlogistics\t能开发票吗\n", encoding="utf-8")
    bad = CliRunner().invoke(main, ["eval", "--no-misses", "--min-accuracy", "0.9", "--knowledge",
                                    str(ROOT / "knowledge"), str(cases)])
    assert bad.exit_code == 1, bad.output
    assert "top-1 accuracy" in bad.output


def test_malformed_case_file_is_a_clear_error(tmp_path):
    f = tmp_path / "cases.tsv"
    f.write_text("logistics 快递到哪了\n")
    out = CliRunner().invoke(main, ["eval", str(f)])
    assert out.exit_code == 2 and "cases.tsv:1" in out.output
