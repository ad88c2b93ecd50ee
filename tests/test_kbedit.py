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
    assert any(p.startswith("console.yaml:") and "「title」" in p for p in info.value.problems)  # no server path
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


# --- Hardening item 16: round-trip edits (ruamel.yaml) -------------------------------------------

ZERO_INDENT = """\
# 自定义问题：列表不缩进的写法
intents:
- id: gift_wrap
  title: 礼品包装
  examples:
  - 能包装成礼物吗
  answer: 可以，下单时备注「礼品包装」。
- id: engraving  # 最后一条
  title: 刻字
  examples:
  - 可以刻字吗
  answer: 支持免费刻字，下单时备注内容。

# 这些同义词只用于本店
synonyms:
- [刻字, 镌刻]
"""


@pytest.fixture
def zero_indent(folder):
    (folder / "custom.yaml").write_text(ZERO_INDENT, encoding="utf-8")
    return folder / "custom.yaml"


def test_adding_an_example_to_the_last_intent_of_a_zero_indent_file_keeps_what_follows(editor, folder, zero_indent):
    """Bug a: the example goes into the last intent's list, written in the file's own zero-indent
    style; the blank line, the comment and the `synonyms:` section after it stay exactly as they were."""
    editor.add_example("engraving", "能刻名字吗", who="root")
    assert zero_indent.read_text(encoding="utf-8") == ZERO_INDENT.replace(
        "  - 可以刻字吗\n", "  - 可以刻字吗\n  - 能刻名字吗\n")
    kb = load(folder)
    assert kb.intent("engraving").examples == ("可以刻字吗", "能刻名字吗")
    assert ("刻字", "镌刻") in kb.synonyms


def test_editing_the_last_intent_of_a_zero_indent_file_keeps_what_follows(editor, folder, zero_indent):
    """Bug a, through the edit form: a new answer and a new keyword change only those lines (the
    keyword goes before the answer, as the console writes it); comments and `synonyms:` survive."""
    editor.save({"id": "engraving", "title": "刻字", "examples": ["可以刻字吗"], "keywords": ["刻字"],
                 "answer": "支持免费刻字，三天内发货。"}, who="root", expected=editor.version_of("engraving"))
    assert zero_indent.read_text(encoding="utf-8") == ZERO_INDENT.replace(
        "  answer: 支持免费刻字，下单时备注内容。\n", "  keywords: [刻字]\n  answer: 支持免费刻字，三天内发货。\n")
    kb = load(folder)
    assert kb.intent("engraving").answer == "支持免费刻字，三天内发货。"
    assert ("刻字", "镌刻") in kb.synonyms


def test_deleting_the_last_intent_of_a_zero_indent_file_keeps_what_follows(editor, folder, zero_indent):
    """Bug a, deleting: only the intent's own lines go; the comment above `synonyms:` and the section stay."""
    editor.delete("engraving", who="root")
    assert zero_indent.read_text(encoding="utf-8") == ZERO_INDENT.replace(
        "- id: engraving  # 最后一条\n  title: 刻字\n  examples:\n  - 可以刻字吗\n  answer: 支持免费刻字，下单时备注内容。\n", "")
    kb = load(folder)
    assert kb.intent("engraving") is None and ("刻字", "镌刻") in kb.synonyms


def test_an_edit_changes_only_its_own_lines_in_the_projects_own_style(editor, folder):
    """shop.yaml has header comments, comments between sections, flow lists and a mapping before
    `intents:`: adding an example adds exactly one line, indented like its neighbours."""
    before = (folder / "shop.yaml").read_text(encoding="utf-8")
    editor.add_example("greeting", "哈喽", who="root")
    assert (folder / "shop.yaml").read_text(encoding="utf-8") == before.replace(
        "      - 有人吗\n", "      - 有人吗\n      - 哈喽\n")


def test_a_new_intent_is_written_in_the_projects_style(editor, folder):
    """console.yaml is created with its header comment, plain scalars and a flow list of keywords."""
    editor.save({"id": "membership", "title": "会员", "examples": ["怎么办会员", "会员有什么用"],
                 "keywords": ["会员", "VIP"], "answer": "在「我的-会员」开通。"}, who="root", expected="new")
    assert (folder / "console.yaml").read_text(encoding="utf-8") == (
        "# Intents added from the console. Edit here or in the console.\n"
        "intents:\n"
        "  - id: membership\n"
        "    title: 会员\n"
        "    examples:\n"
        "      - 怎么办会员\n"
        "      - 会员有什么用\n"
        "    keywords: [会员, VIP]\n"
        "    answer: 在「我的-会员」开通。\n")


def test_full_width_comma_in_an_added_example_is_kept(editor, folder):
    """Bug b: 「，」 in a question turned into an example stays 「，」, in the file and once reloaded."""
    before = (folder / "aftersale.yaml").read_text(encoding="utf-8")
    editor.add_example("stock", "有货吗，什么时候发", who="root")
    assert (folder / "aftersale.yaml").read_text(encoding="utf-8") == before.replace(
        "      - 显示缺货怎么办\n", "      - 显示缺货怎么办\n      - 有货吗，什么时候发\n")
    assert load(folder).intent("stock").examples[-1] == "有货吗，什么时候发"


def test_saving_the_edit_form_keeps_full_width_commas(editor, folder):
    """Bug b, through the edit form: what the console posts keeps 「，」 in every line, and saving an
    intent whose only change is its answer leaves its examples and keywords as they were."""
    import flask

    from wxkf.agents.admin import _lines
    editor.add_example("stock", "有货吗，什么时候发", who="root")
    stock = load(folder).intent("stock")
    form = {"examples": "\n".join(stock.examples), "keywords": "\n".join(stock.keywords + ("现货，预售",))}
    with flask.Flask(__name__).test_request_context(method="POST", data=form):
        examples, keywords = _lines("examples"), _lines("keywords")
    assert "有货吗，什么时候发" in examples and keywords[-1] == "现货，预售"
    editor.save({"id": "stock", "title": stock.title, "examples": examples, "keywords": keywords[:-1],
                 "answer": "新答案"}, who="root", expected=editor.version_of("stock"))
    stock_after = load(folder).intent("stock")
    assert stock_after.examples == stock.examples and stock_after.keywords == stock.keywords
    assert stock_after.answer == "新答案"


def test_new_with_an_existing_id_is_refused_and_changes_nothing(editor, folder):
    """Bug c: kb/new with an id that is taken (in a shipped file, with stray spaces, or in
    console.yaml itself) raises Conflict naming the id; no file and no history entry changes."""
    editor.save({"id": "membership", "title": "会员", "examples": ["怎么办会员"], "answer": "在「我的-会员」开通。"},
                who="root", expected="new")
    files = {p.name: p.read_bytes() for p in folder.glob("*.yaml")}
    history = editor.history()
    for taken in ("refund", " refund ", "membership"):
        with pytest.raises(Conflict, match=f"「{taken}」已存在"):
            editor.save({"id": taken, "title": "新的", "examples": ["x"], "answer": "y"}, who="a", expected="new")
    assert {p.name: p.read_bytes() for p in folder.glob("*.yaml")} == files
    assert editor.history() == history


ODD_QUESTIONS = [
    ("第一行\u2028第二行", "第一行 第二行"),
    ("段一\u2029段二", "段一 段二"),
    ("下一行\x85在这", "下一行 在这"),
    ("响铃\x07退格\x08空\x00转义\x1b结束\x7f", "响铃 退格 空 转义 结束"),
    ("回车\r\n换行\n制表\t竖\x0b页\x0c", "回车 换行 制表 竖 页"),
    ("#", "#"),
    ("# 像注释", "# 像注释"),
    ("有 # 井号", "有 # 井号"),
    ("- 像列表", "- 像列表"),
    ("-", "-"),
    ('他说"包邮"，\'真的\'吗', '他说"包邮"，\'真的\'吗'),
    ("'单引号开头'", "'单引号开头'"),
    ('"双引号开头"', '"双引号开头"'),
    ("运费: 多少？", "运费: 多少？"),
    ("key:value", "key:value"),
    ("结尾冒号:", "结尾冒号:"),
    ("yes", "yes"),
    ("on", "on"),
    ("null", "null"),
    ("~", "~"),
    ("12:30", "12:30"),
    ("2024-06-01", "2024-06-01"),
    ("1_000", "1_000"),
    ("0x1F", "0x1F"),
    ("&锚点 *别名 !标签", "&锚点 *别名 !标签"),
    ("%指令", "%指令"),
    ("@某人 `反引号`", "@某人 `反引号`"),
    ("[没关的括号 {花括号", "[没关的括号 {花括号"),
    ("| 竖线", "| 竖线"),
    ("> 大于号", "> 大于号"),
    ("? 问号开头", "? 问号开头"),
    ("  前后空格\u2028", "前后空格"),
    ("表情😀和\ufeff零宽", "表情😀和\ufeff零宽"),
]


@pytest.mark.parametrize("question, stored", ODD_QUESTIONS)
def test_an_odd_shopper_question_becomes_one_clean_example(editor, folder, question, stored):
    """Bug d: line and paragraph separators (U+2028, U+2029, U+0085), CR/LF and other control
    characters become one space (an example is one line: the console's form splits on them);
    everything else ("#", "- ", quotes, colons, YAML words and indicators) is kept as typed. The file
    gains exactly one line, stays loadable, and the example survives the console's form unchanged."""
    path = folder / "aftersale.yaml"
    before = path.read_text(encoding="utf-8")
    editor.add_example("stock", question, who="root")
    after = path.read_text(encoding="utf-8")
    assert after.splitlines() == after.split("\n")[:-1]  # no stray line break of any kind
    added = [line for line in after.split("\n") if line not in before.split("\n")]
    assert len(added) == 1 and added[0].startswith("      - ")
    assert after.replace(added[0] + "\n", "", 1) == before
    examples = load(folder).intent("stock").examples
    assert examples == ("这个还有货吗", "什么时候补货", "显示缺货怎么办", stored)
    assert "\n".join(examples).splitlines() == list(examples)


@pytest.mark.parametrize("question", ["\u2028", " \x00\x85 ", ""])
def test_a_question_of_nothing_but_separators_is_refused(editor, folder, question):
    """Bug d: an example that is empty once cleaned is refused with a problem, and nothing is written."""
    before = {p.name: p.read_bytes() for p in folder.glob("*.yaml")}
    with pytest.raises(KnowledgeError):
        editor.add_example("stock", question, who="root")
    assert {p.name: p.read_bytes() for p in folder.glob("*.yaml")} == before and editor.history() == []


def test_an_answer_keeps_its_lines_and_odd_characters(editor, folder):
    """An answer may span lines (the form posts CRLF, stored as LF); U+2028, quotes, "#" and colons
    inside it survive a reload exactly, and nothing after the intent changes."""
    answer = '第一行: "引号"\r\n# 第二行\u2028同段\r\n\r\n- 第四行'
    before = (folder / "aftersale.yaml").read_text(encoding="utf-8")
    editor.save({"id": "stock", "title": "库存与补货", "examples": ["这个还有货吗"], "answer": answer}, who="root")
    assert load(folder).intent("stock").answer == answer.replace("\r\n", "\n")
    after = (folder / "aftersale.yaml").read_text(encoding="utf-8")
    assert after.split("  - id: page_error")[1] == before.split("  - id: page_error")[1]
    assert after.split("  - id: stock")[0] == before.split("  - id: stock")[0]


COMMENTED = """\
# 两条问题，之间有注释
intents:
    # 第一条
    - id: gift_wrap
      title: "礼品包装"
      examples:
          - '能包装成礼物吗'
          - "送人用的"  # 常见
      answer: 可以，下单时备注「礼品包装」。

    # 第二条：刻字

    - id: engraving
      title: 刻字
      examples:
          - 可以刻字吗
      keywords: [刻字]
      answer: 支持免费刻字。
# 同义词
synonyms:
    - [刻字, 镌刻]
"""


@pytest.fixture
def commented(folder):
    (folder / "custom.yaml").write_text(COMMENTED, encoding="utf-8")
    return folder / "custom.yaml"


def test_a_four_space_file_keeps_its_indentation_quotes_and_comments(editor, folder, commented):
    """A file indented by 4 with quoted examples and comments everywhere: a new answer for the first
    intent changes that one line; quotes, comments, blank lines and the rest stay."""
    editor.save({"id": "gift_wrap", "title": "礼品包装", "examples": ["能包装成礼物吗", "送人用的"],
                 "answer": "可以，免费包装。"}, who="root", expected=editor.version_of("gift_wrap"))
    assert commented.read_text(encoding="utf-8") == COMMENTED.replace(
        "      answer: 可以，下单时备注「礼品包装」。\n", "      answer: 可以，免费包装。\n")


def test_deleting_an_intent_keeps_the_comments_around_it(editor, folder, commented):
    """Deleting the first intent removes only its lines: the comments above and below it stay."""
    editor.delete("gift_wrap", who="root")
    assert commented.read_text(encoding="utf-8") == COMMENTED.replace(
        "    - id: gift_wrap\n      title: \"礼品包装\"\n      examples:\n          - '能包装成礼物吗'\n"
        "          - \"送人用的\"  # 常见\n      answer: 可以，下单时备注「礼品包装」。\n", "")
    assert load(folder).intent("engraving").answer == "支持免费刻字。"


def test_removing_keywords_and_examples_keeps_the_lines_that_follow(editor, folder, commented):
    """The last intent loses its keywords and gets other examples: the comment and the
    `synonyms:` section after it stay after it; the example that stays keeps its quotes."""
    editor.save({"id": "gift_wrap", "title": "礼品包装", "examples": ["送人用的", "包装费多少"],
                 "answer": "可以，下单时备注「礼品包装」。"}, who="root")
    editor.save({"id": "engraving", "title": "刻字", "examples": ["刻字要钱吗"], "answer": "支持免费刻字。"},
                who="root")
    assert commented.read_text(encoding="utf-8") == COMMENTED.replace(
        "          - '能包装成礼物吗'\n          - \"送人用的\"  # 常见\n",
        "          - \"送人用的\"\n          - 包装费多少\n").replace(
        "          - 可以刻字吗\n      keywords: [刻字]\n", "          - 刻字要钱吗\n")


def test_a_new_intent_goes_before_what_follows_the_list_in_console_yaml(editor, folder):
    """An admin added `synonyms:` after the intents of console.yaml: a new intent goes at the end
    of the list, before that section and the comment above it."""
    text = ("# Intents added from the console. Edit here or in the console.\n"
            "intents:\n"
            "  - id: membership\n"
            "    title: 会员\n"
            "    examples:\n"
            "      - 怎么办会员\n"
            "    answer: 在「我的-会员」开通。\n"
            "\n"
            "# 会员的说法\n"
            "synonyms:\n"
            "  - [会员, VIP]\n")
    (folder / "console.yaml").write_text(text, encoding="utf-8")
    editor.save({"id": "points", "title": "积分", "examples": ["积分怎么用"], "answer": "积分可抵现。"}, who="root",
                expected="new")
    assert (folder / "console.yaml").read_text(encoding="utf-8") == text.replace(
        "    answer: 在「我的-会员」开通。\n",
        "    answer: 在「我的-会员」开通。\n"
        "  - id: points\n    title: 积分\n    examples:\n      - 积分怎么用\n    answer: 积分可抵现。\n")
    assert ("会员", "vip") in [tuple(w.lower() for w in g) for g in load(folder).synonyms]


def test_deleting_the_only_intent_of_a_file_leaves_an_empty_list(editor, folder):
    """console.yaml with one intent: deleting it leaves `intents: []` and the header comment, a file
    the loader accepts (an empty `intents:` it would refuse)."""
    editor.save({"id": "membership", "title": "会员", "examples": ["怎么办会员"], "answer": "在「我的-会员」开通。"},
                who="root")
    editor.delete("membership", who="root")
    assert (folder / "console.yaml").read_text(encoding="utf-8") == (
        "# Intents added from the console. Edit here or in the console.\nintents: []\n")
    assert load(folder).intent("membership") is None


def test_crlf_line_ends_and_document_markers_survive(editor, folder):
    """A file saved on Windows, with comments above `---` and a closing `...`: an edit keeps CRLF on
    every line and those markers and comments as they were."""
    text = ("# 从 Windows 上传\r\n---\r\nintents:\r\n  - id: engraving\r\n    title: 刻字\r\n    examples:\r\n"
            "      - 可以刻字吗  # 例句\r\n\r\n    answer: 支持免费刻字。\r\n...\r\n# 完\r\n")
    (folder / "custom.yaml").write_text(text, encoding="utf-8", newline="")
    editor.add_example("engraving", "能刻名字吗", who="root")
    assert (folder / "custom.yaml").read_bytes().decode("utf-8") == text.replace(
        "  # 例句\r\n", "  # 例句\r\n      - 能刻名字吗\r\n")


def test_odd_keywords_and_titles_survive(editor, folder):
    """Keywords go in a flow list, where "," "[" and ":" mean something; titles are one line."""
    keywords = ["a,b", "[x]", "yes", "#k", "k: v", "{y}", "'q'"]
    editor.save({"id": "special", "title": "标题\u2028第二行: #", "examples": ["x"], "keywords": keywords,
                 "answer": "y"}, who="root")
    intent = load(folder).intent("special")
    assert intent.keywords == tuple(keywords) and intent.title == "标题 第二行: #"


def test_a_broken_file_elsewhere_is_named_when_saving_and_nothing_is_written(editor, folder):
    """A file that does not parse does not hide the other files' intents from the form, and a save
    is refused naming it."""
    (folder / "broken.yaml").write_text("intents: [\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in folder.glob("*.yaml")}
    assert editor.version_of("invoice") != "new"
    with pytest.raises(KnowledgeError, match="broken.yaml"):
        editor.add_example("invoice", "能开专票吗", who="root")
    with pytest.raises(KnowledgeError, match="broken.yaml"):
        editor.save({"id": "invoice", "title": "开发票", "examples": ["能开发票吗"], "answer": "可以。"}, who="root")
    assert {p.name: p.read_bytes() for p in folder.glob("*.yaml")} == before
