import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from wxkf.cli import main
from wxkf.dialogue.knowledge import KnowledgeStore, load
from wxkf.errors import KnowledgeError

SHIPPED = Path(__file__).resolve().parent.parent / "knowledge"


def test_shipped_knowledge_is_valid_and_covers_the_shop():
    kb = load(SHIPPED)
    ids = {i.id for i in kb.intents}
    for needed in ("logistics", "change_address", "refund", "invoice", "payment", "coupon", "size_advice",
                   "page_error", "overseas", "greeting"):
        assert needed in ids
    assert kb.welcome and kb.fallback and "投诉" in kb.escalation_keywords


def test_errors_name_file_and_line(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "intents:\n"
        "  - id: ok_one\n    title: 好\n    examples: [你好]\n    answer: 您好\n"
        "  - id: Bad-Id\n    title: x\n    examples: [x]\n    answer: x\n"
        "  - id: no_answer\n    title: 缺答案\n    examples: [x]\n")
    (tmp_path / "b.yaml").write_text("intents:\n  - id: ok_one\n    title: 重复\n    examples: [y]\n    answer: y\n")
    with pytest.raises(KnowledgeError) as info:
        load(tmp_path)
    problems = "\n".join(info.value.problems)
    assert f"{tmp_path / 'a.yaml'}:6: 缺少「id」或格式不对" in problems
    assert f"{tmp_path / 'a.yaml'}:10: 缺少「answer」" in problems
    assert f"{tmp_path / 'b.yaml'}:2: 问题 id「ok_one」重复（第一次出现在 {tmp_path / 'a.yaml'}:2）" in problems


def test_yaml_syntax_error_has_a_line(tmp_path):
    (tmp_path / "a.yaml").write_text("intents:\n  - id: x\n    title: [oops\n")
    with pytest.raises(KnowledgeError, match=r"a\.yaml:\d+: YAML 格式错误：方括号 \[ \] 没有配对"):
        load(tmp_path)


@pytest.mark.parametrize("text, says", [
    ("intents:\n  - id: x\n    title: 价格: 10元\n", "文字里有冒号时请给整句加引号"),
    ("intents:\n\t- id: x\n", "请用空格缩进"),
    ("intents:\n  - id: x\n   title: a\n", "缩进不齐"),
    ('intents:\n  - id: "x\n', "引号没有配对"),
])
def test_yaml_mistakes_admins_make_are_explained_in_chinese(tmp_path, text, says):
    (tmp_path / "a.yaml").write_text(text)
    with pytest.raises(KnowledgeError) as info:
        load(tmp_path)
    assert says in info.value.problems[0]


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(KnowledgeError, match=r"没有 \*\.yaml 文件"):
        load(tmp_path)


def test_store_reloads_edits_and_keeps_the_last_good_version(tmp_path):
    shutil.copytree(SHIPPED, tmp_path / "kb")
    store = KnowledgeStore(tmp_path / "kb", interval=0)
    before = store.get()
    path = tmp_path / "kb" / "shop.yaml"
    path.write_text(path.read_text().replace("欢迎光临示例商城", "欢迎来到新商城"))
    assert "新商城" in store.get().welcome
    path.write_text("intents: [")
    time.sleep(0.01)
    kb = store.get()
    assert "新商城" in kb.welcome and store.last_error is not None
    assert len(kb.intents) == len(before.intents)


def test_kb_check_cli(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["kb", "check", str(SHIPPED)])
    assert ok.exit_code == 0 and "intents" in ok.output
    (tmp_path / "a.yaml").write_text("intents:\n  - id: x\n    title: t\n    answer: a\n")
    bad = runner.invoke(main, ["kb", "check", str(tmp_path)])
    assert bad.exit_code == 1
    assert f"{tmp_path / 'a.yaml'}:2: 问题「x」需要「examples」" in bad.output


def test_intent_and_chat_cli_print_json_lines():
    import json
    runner = CliRunner()
    out = runner.invoke(main, ["intent", "--knowledge", str(SHIPPED), "发票怎么开", "转人工"])
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert rows[0]["intent"] == "invoice" and rows[0]["escalate"] is False
    assert rows[1]["escalate"] is True and rows[1]["reason"] == "request"
    chat = runner.invoke(main, ["chat", "--json", "--no-generation", "--knowledge", str(SHIPPED)],
                         input="你好\n我的快递到哪了\n")
    replies = [json.loads(line) for line in chat.output.splitlines()]
    assert [r["source"] for r in replies] == ["knowledge", "knowledge"]
    assert replies[1]["intent"] == "logistics" and "发货" in replies[1]["reply"]


def test_an_emptied_file_is_an_error_not_a_silent_loss_of_its_intents(tmp_path):
    shutil.copytree(SHIPPED, tmp_path / "kb")
    (tmp_path / "kb" / "orders.yaml").write_text("# 清空了\n")
    with pytest.raises(KnowledgeError) as info:
        load(tmp_path / "kb")
    assert "orders.yaml:1: 文件是空的" in str(info.value)
    out = CliRunner().invoke(main, ["kb", "check", str(tmp_path / "kb")])
    assert out.exit_code == 1 and "orders.yaml:1" in out.output


def test_a_knowledge_base_broken_at_start_up_runs_on_the_last_good_version(tmp_path):
    shutil.copytree(SHIPPED, tmp_path / "kb")
    snapshot = tmp_path / "var" / "knowledge-last-good.json"
    good = KnowledgeStore(tmp_path / "kb", snapshot=snapshot).get()
    assert snapshot.exists()
    (tmp_path / "kb" / "aftersale.yaml").write_text("intents:\n  - id: [broken\n")
    store = KnowledgeStore(tmp_path / "kb", snapshot=snapshot)  # a restart with the broken file
    assert store.get() == good
    assert "aftersale.yaml" in str(store.last_error)
    with pytest.raises(KnowledgeError):  # no snapshot: nothing to fall back on, and it says why
        KnowledgeStore(tmp_path / "kb")
