"""Knowledge editing: validated, atomic, comments kept, versioned, rolled back."""
import shutil
from pathlib import Path

import pytest

from wxkf.agents.kbedit import Conflict, KnowledgeEditor
from wxkf.dialogue.knowledge import KnowledgeStore, load
from wxkf.errors import KnowledgeError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def folder(tmp_path):
    shutil.copytree(ROOT / "knowledge", tmp_path / "kb")
    return tmp_path / "kb"


@pytest.fixture
def editor(folder, r):
    return KnowledgeEditor(folder, r)


def test_edit_replaces_only_that_intent_and_keeps_comments(editor, folder):
    before = (folder / "aftersale.yaml").read_text()
    editor.save({"id": "invoice", "title": "开发票", "examples": ["能开发票吗", "公司报销要票"],
                 "answer": "可以开具电子发票，开票后发送到您的预留邮箱。"}, who="root")
    after = (folder / "aftersale.yaml").read_text()
    assert "# 售后、发票、优惠、商品、页面问题" in after
    assert before.split("  - id: invoice")[0] == after.split("  - id: invoice")[0]
    assert before.split("  - id: coupon")[1] == after.split("  - id: coupon")[1]
    kb = load(folder)
    assert kb.intent("invoice").examples == ("能开发票吗", "公司报销要票")
    assert len(kb.intents) == 15


def test_add_goes_to_console_yaml_and_is_live(editor, folder):
    store = KnowledgeStore(folder, interval=0)
    editor.save({"id": "membership", "title": "会员", "examples": ["怎么办会员"], "answer": "在「我的-会员」开通。"},
                who="root")
    assert store.get().intent("membership").answer == "在「我的-会员」开通。"
    assert (folder / "console.yaml").exists()


def test_invalid_edit_is_refused_with_file_line_and_nothing_written(editor, folder):
    before = {p.name: p.read_text() for p in folder.glob("*.yaml")}
    with pytest.raises(KnowledgeError):
        editor.save({"id": "invoice", "title": "开发票", "examples": [], "answer": "x"}, who="root")
    with pytest.raises(KnowledgeError, match="id"):
        editor.save({"id": "Bad Id", "title": "x", "examples": ["x"], "answer": "x"}, who="root")
    with pytest.raises(KnowledgeError) as info:
        editor.save({"id": "new_one", "title": "", "examples": ["x"], "answer": "x"}, who="root")
    assert any("console.yaml:" in p and "'title'" in p for p in info.value.problems)
    assert {p.name: p.read_text() for p in folder.glob("*.yaml")} == before


def test_yaml_special_characters_survive(editor, folder):
    answer = '运费: 10元 # 不是注释, "引号" 和 [括号] {花括号} 都保留'
    editor.save({"id": "special", "title": "特殊: 字符", "examples": ["- 破折号开头", "@at"], "answer": answer},
                who="root")
    intent = load(folder).intent("special")
    assert intent.answer == answer and intent.examples == ("- 破折号开头", "@at")


def test_delete_and_rollback(editor, folder):
    original = (folder / "orders.yaml").read_text()
    version = editor.delete("overseas", who="root")
    assert load(folder).intent("overseas") is None
    editor.rollback(version, who="root")
    assert (folder / "orders.yaml").read_text() == original
    actions = [(h["action"], h["who"], h["intent"]) for h in editor.history()]
    assert actions[:2] == [("rollback", "root", "overseas"), ("delete", "root", "overseas")]


def test_rollback_of_an_add_removes_the_new_file(editor, folder):
    version = editor.save({"id": "x_new", "title": "新", "examples": ["新问题"], "answer": "新答案"}, who="root")
    editor.rollback(version, who="root")
    assert not (folder / "console.yaml").exists()
    assert load(folder).intent("x_new") is None


def test_add_example(editor, folder):
    editor.add_example("stock", "这款还会再来货吗", who="root")
    assert "这款还会再来货吗" in load(folder).intent("stock").examples


def test_two_admins_saving_different_intents_of_one_file_both_keep_their_edit(editor, folder):
    import threading
    ids = ["refund", "exchange", "invoice", "coupon", "size_advice", "stock"]
    errors = []

    def edit(intent_id):
        try:
            kb = load(folder)
            i = kb.intent(intent_id)
            editor.save({"id": i.id, "title": i.title, "examples": list(i.examples), "keywords": list(i.keywords),
                         "answer": f"{intent_id} 的新答案"}, who=intent_id)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=edit, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    kb = load(folder)
    assert [kb.intent(i).answer for i in ids] == [f"{i} 的新答案" for i in ids]


def test_a_stale_form_is_a_conflict_not_a_silent_overwrite(editor, folder):
    opened = editor.version_of("invoice")  # admin A opens the form
    i = load(folder).intent("invoice")
    editor.save({"id": "invoice", "title": i.title, "examples": list(i.examples), "answer": "B 的答案"}, who="b")
    with pytest.raises(Conflict):
        editor.save({"id": "invoice", "title": i.title, "examples": list(i.examples), "answer": "A 的旧答案"},
                    who="a", expected=opened)
    assert load(folder).intent("invoice").answer == "B 的答案"


def test_new_with_an_existing_id_does_not_replace_it(editor, folder):
    before = load(folder).intent("refund")
    with pytest.raises(Conflict):
        editor.save({"id": "refund", "title": "新的", "examples": ["x"], "answer": "y"}, who="a", expected="new")
    assert load(folder).intent("refund") == before
