"""Knowledge editing from the console: validated, atomic, versioned, comments kept.

An edit is a round trip through ruamel.yaml: the file is parsed into a document that remembers its
comments, key order, quoting and flow lists, only the values of the one intent being edited are
changed, and the document is written back in the file's own indentation. So the rest of the file,
comments and the sections after `intents:` included, stays as the admin wrote it, whatever its
layout. New intents go to `console.yaml`. The whole folder is validated with the same code as
`wxkf kb check` (PyYAML, YAML 1.1) before anything is written, the write is atomic (temp file +
rename), and every change is recorded with who/when and the file's previous text, so any version can
be rolled back in one step. Processes pick the change up within a second (KnowledgeStore reload).
"""
import contextlib
import difflib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.scalarstring import (DoubleQuotedScalarString, FoldedScalarString, LiteralScalarString,
                                      SingleQuotedScalarString)
from ruamel.yaml.tokens import CommentToken

from .. import keys
from ..dialogue.knowledge import ID_RE, load, yaml_problem
from ..errors import KnowledgeError

NEW_FILE = "console.yaml"
NEW_FILE_TEXT = "# Intents added from the console. Edit here or in the console.\nintents:\n"

LAYOUTS = ((2, 4, 2), (2, 2, 0), (2, 6, 4), (4, 4, 2), (4, 2, 0), (4, 6, 4))
"""Indentations a file may be written in, as ruamel's (mapping, sequence, offset); the first is the
project's own (`intents:` / `  - id:` / `    examples:` / `      - ...`) and the one new files get."""

WIDTH = 1 << 30
"""Never fold a long line: answers are written on one line, as admins write them."""

_ODD = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
"""Control characters (CR, LF, TAB, NEL...), line and paragraph separators, lone surrogates."""

_ESCAPE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
"""Characters a YAML file cannot hold as they are, or that a reader takes for a line break."""


def _one_line(text):
    """Text for a one-line field (a title, an example, a keyword): every run of control characters
    and line or paragraph separators becomes one space. The console shows examples one per line and
    splits what it posts back with str.splitlines(), which also breaks at U+2028, U+0085, \\x1c...:
    such a character would split one example into two the next time the intent is saved."""
    return _ODD.sub(" ", str(text)).strip()


def _scalar(text):
    """`text` as a YAML scalar that the knowledge loader (PyYAML, YAML 1.1) reads back as exactly
    this string. ruamel.yaml writes YAML 1.2, where `yes`, `on` or `12:30` are plain text but PyYAML
    reads a boolean or a number, and it writes U+2028 and U+0085 raw, which PyYAML takes for a
    line break: those get double quotes and escapes (ruamel quotes text on several lines itself)."""
    if _ESCAPE.search(text):
        return DoubleQuotedScalarString(text)
    if yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False)) != "tag:yaml.org,2002:str":
        return SingleQuotedScalarString(text)
    return text


def _cleaned(intent):
    """The intent as it is stored: one-line title, examples and keywords (empty ones dropped), and
    an answer whose lines end in LF (a browser posts a textarea with CRLF)."""
    def lines(values):
        return [text for text in (_one_line(v) for v in values or []) if text]
    answer = (intent.get("answer") or "").replace("\r\n", "\n").replace("\r", "\n").strip()
    return {"id": (intent.get("id") or "").strip(), "title": _one_line(intent.get("title") or ""),
            "examples": lines(intent.get("examples")), "keywords": lines(intent.get("keywords")), "answer": answer}


def _seq(values, flow=False):
    seq = CommentedSeq(_scalar(v) for v in values)
    if flow:
        seq.fa.set_flow_style()
    return seq


def _new_item(intent):
    """A new intent in the order and style the console has always written: keywords as a flow list."""
    item = CommentedMap()
    item["id"] = _scalar(intent["id"])
    item["title"] = _scalar(intent["title"])
    item["examples"] = _seq(intent["examples"])
    if intent.get("keywords"):
        item["keywords"] = _seq(intent["keywords"], flow=True)
    item["answer"] = _scalar(intent["answer"])
    return item


def _yaml(layout=LAYOUTS[0]):
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = WIDTH
    mapping, sequence, offset = layout
    rt.indent(mapping=mapping, sequence=sequence, offset=offset)
    return rt


def _parse(text, path, first_line=1):
    try:
        return _yaml().load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + first_line}" if mark else ""
        raise KnowledgeError([f"{path}{line}: YAML 格式错误：{yaml_problem(exc)}"]) from None


_HEAD = re.compile(r"\A(?:[ \t]*(?:[#%].*)?\n)*---[ \t]*(?:#.*)?\n")
_FOOT = re.compile(r"^\.\.\.[ \t]*(?:#.*)?\n(?:[ \t]*(?:#.*)?\n)*\Z", re.MULTILINE)


def _frame(text):
    """(head, body, foot): ruamel drops a `---` line and every comment above it, and a closing `...`,
    so those lines are kept aside as they are and only the body is edited."""
    head = _HEAD.match(text)
    head = head.group() if head else ""
    foot = _FOOT.search(text, len(head))
    foot = foot.group() if foot else ""
    return head, text[len(head):len(text) - len(foot)], foot


def _dump(doc, layout):
    out = io.StringIO()
    _yaml(layout).dump(doc, out)
    return out.getvalue()


def _layout_of(text, doc):
    """The indentation `text` is written in: the layout whose dump of the unchanged document is the
    text itself (or comes closest), so that an edit changes no line it does not edit."""
    best, best_score = LAYOUTS[0], -1.0
    for layout in LAYOUTS:
        out = _dump(doc, layout)
        if out == text:
            return layout
        score = difflib.SequenceMatcher(None, text.splitlines(), out.splitlines(), autojunk=False).ratio()
        if score > best_score:
            best, best_score = layout, score
    return best


def _edited(text, path, change):
    """`text` with `change(document)` applied, written back in the text's own indentation and line
    ends (ruamel would leave a CRLF file with mixed ones)."""
    crlf = "\r\n" in text
    head, body, foot = _frame(text.replace("\r\n", "\n"))
    doc = _parse(body, path, first_line=1 + head.count("\n"))
    layout = _layout_of(body, doc)
    change(doc)
    new_text = head + _dump(doc, layout) + foot
    return new_text.replace("\n", "\r\n") if crlf else new_text


def _read(path):
    """The file's text with its line ends as they are (CRLF too: an edit keeps them)."""
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


def _intents(doc):
    intents = doc.get("intents") if isinstance(doc, dict) else None
    return intents if isinstance(intents, list) else []


def _index(doc, intent_id):
    """Position of the intent in the document's `intents:` list, or None."""
    for i, item in enumerate(_intents(doc)):
        if isinstance(item, dict) and item.get("id") == intent_id:
            return i
    return None


def _fingerprint(item):
    return hashlib.sha1(json.dumps(item, ensure_ascii=False, default=str).encode("utf-8")).hexdigest()[:16]


def render_intent(intent, indent="  "):
    """One intent as the YAML list item the console writes, its `- ` at `indent`."""
    text = _dump(CommentedMap(intents=CommentedSeq([_new_item(intent)])), LAYOUTS[0]).split("\n", 1)[1]
    return "".join(indent + line[2:] for line in text.splitlines(keepends=True))


# Comments. ruamel hangs the lines that follow a value (blank lines, comments, up to the next item or
# key) on that value: on the last scalar of the innermost block collection that ends there. When
# that value goes or stops being last, those lines, which belong to what follows, are moved on.

def _is_block(node):
    return isinstance(node, (CommentedMap, CommentedSeq)) and len(node) > 0 and not node.fa.flow_style()


def _last_slot(container, key):
    """(collection, key) holding the comment lines that follow container[key]."""
    while _is_block(container[key]):
        container = container[key]
        key = list(container)[-1] if isinstance(container, CommentedMap) else len(container) - 1
    return container, key


def _post_index(collection):
    return 2 if isinstance(collection, CommentedMap) else 0


def _take_tail(container, key):
    """Remove and return the lines that follow container[key] (its own end-of-line comment stays)."""
    collection, k = _last_slot(container, key)
    slot = collection.ca.items.get(k)
    token = slot[_post_index(collection)] if slot else None
    if token is None:
        return ""
    own, _, rest = token.value.partition("\n")
    slot[_post_index(collection)] = CommentToken(own + "\n", token.start_mark) if own.strip() else None
    return rest


def _give_tail(container, key, lines):
    """Put `lines` (whole comment or blank lines) right after container[key], after its own."""
    if not lines:
        return
    collection, k = _last_slot(container, key)
    slot = collection.ca.items.setdefault(k, [None, None, None, None])
    token = slot[_post_index(collection)]
    if token is None:
        slot[_post_index(collection)] = CommentToken("\n" + lines, CommentMark(0))
    else:
        token.value = token.value + lines


def _lines_of(tokens):
    """Comment tokens kept before a value (one per line, each with its column) as text."""
    return "".join(" " * t.start_mark.column + t.value if t.value.strip() else t.value for t in tokens or [])


def _slot(collection, key):
    return collection.ca.items.get(key) or [None, None, None, None]


def _remove(seq, index, parent, key):
    """Delete seq[index] but not the comment lines around it: they go on after what precedes it."""
    lines = _lines_of(_slot(seq, index)[1]) + _take_tail(seq, index)
    del seq[index]
    if index > 0:
        _give_tail(seq, index - 1, lines)
    elif seq:
        slot = seq.ca.items.setdefault(0, [None, None, None, None])
        slot[1] = [CommentToken(line + "\n", CommentMark(0)) for line in lines.splitlines()] + (slot[1] or [])
    else:
        # `intents: []`, which the loader takes for no intents (an empty value it would refuse); the
        # comments that stood above the first item now follow it.
        lines = _lines_of(_slot(parent, key)[3]) + lines
        parent.ca.items.pop(key, None)
        parent[key] = _seq([], flow=True)
        _give_tail(parent, key, lines)


def _set_list(item, key, values, flow, before=None):
    """item[key] = values, changing the stored list in place: the items that stay keep their
    quotes and comments, the list its flow or block style, and the lines after it stay after it."""
    seq = item.get(key)
    if not isinstance(seq, CommentedSeq):
        if key in item:
            item[key] = _seq(values, flow)
        else:
            item.insert(list(item).index(before) if before in item else len(item), key, _seq(values, flow))
        return
    if [str(s) for s in seq] == values:
        return
    keep = 0
    while keep < min(len(seq), len(values)) and str(seq[keep]) == values[keep]:
        keep += 1
    stored = {str(s): s for s in seq[keep:]}  # moved, not changed: keeps its quotes
    tail = _take_tail(seq, len(seq) - 1) if seq else ""
    del seq[keep:]
    seq.extend(stored[v] if v in stored else _scalar(v) for v in values[keep:])
    if seq:
        _give_tail(seq, len(seq) - 1, tail)
    else:
        _give_tail(item, key, tail)


def _set_text(item, key, value):
    """item[key] = value unless it already says that (then its quotes and style stay too)."""
    if key in item and str(item[key]).strip() == value:
        return
    was_block = isinstance(item.get(key), (LiteralScalarString, FoldedScalarString))
    item[key] = _scalar(value)  # ruamel keeps the old value's style (quotes, | or >) where it can
    token = _slot(item, key)[2]
    if was_block and not isinstance(item[key], (LiteralScalarString, FoldedScalarString)) and token is not None:
        # The lines after a value start with the end of its own line, which a block scalar (| or >)
        # has already ended: a quoted value in its place must end its line itself.
        token.value = "\n" + " " * token.start_mark.column + token.value


def _update(item, intent):
    """Change an intent's mapping in place, value by value: what the admin did not change keeps
    its quotes, comments and place."""
    _set_text(item, "title", intent["title"])
    _set_list(item, "examples", intent["examples"], flow=False)
    if intent["keywords"]:
        _set_list(item, "keywords", intent["keywords"], flow=True,
                  before="answer")
    elif "keywords" in item:
        _remove_key(item, "keywords")
    _set_text(item, "answer", intent["answer"])


def _remove_key(item, key):
    """Delete item[key]; the comment lines after it go on after the key before it."""
    position = list(item).index(key)
    lines = _take_tail(item, key)
    del item[key]
    if position > 0:
        _give_tail(item, list(item)[position - 1], lines)


def _append(doc, intent, path):
    """Add a new intent at the end of the `intents:` list, before the comment lines that follow the
    list (they belong to what follows it)."""
    if not isinstance(doc, dict):
        raise KnowledgeError([f"{path}:1: 文件内容必须是「键: 值」的形式，例如以 intents: 开头"])
    intents = doc.get("intents")
    if isinstance(intents, CommentedSeq) and intents:
        lines = _take_tail(intents, len(intents) - 1)
        intents.append(_new_item(intent))
        _give_tail(intents, len(intents) - 1, lines)
    else:  # `intents:` with nothing, `intents: []`, or no `intents:` yet
        lines = _take_tail(doc, "intents") if "intents" in doc else ""
        doc["intents"] = CommentedSeq([_new_item(intent)])
        _give_tail(doc, "intents", lines)


class Conflict(KnowledgeError):
    """The intent changed since the form was opened, or a new intent's id is taken."""


class KnowledgeEditor:
    def __init__(self, folder, redis, clock=time.time, lock_seconds=10):
        self.folder = Path(folder)
        self.redis = redis
        self.clock = clock
        self.lock_seconds = lock_seconds

    @contextlib.contextmanager
    def _locked(self):
        """One read-modify-write of the knowledge folder at a time, across every web process: two
        admins saving different intents of one file both keep their edit."""
        key, token = keys.KB_LOCK, secrets.token_hex(8)
        deadline = time.monotonic() + self.lock_seconds
        while not self.redis.set(key, token, nx=True, px=self.lock_seconds * 1000):
            if time.monotonic() > deadline:
                raise KnowledgeError(["另一位管理员正在保存，请稍后再试。"])
            time.sleep(0.02)
        try:
            yield
        finally:
            self.redis.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
                            "return 0", 1, key, token)

    def version_of(self, intent_id):
        """A fingerprint of the intent as it stands in its file ('new' when there is none): the edit
        form carries it back, so a stale form cannot overwrite a newer edit."""
        found = self._find(intent_id) if intent_id else None
        if found is None:
            return "new"
        path, doc = found
        return _fingerprint(_intents(doc)[_index(doc, intent_id)])

    def source_of(self, intent_id):
        found = self._find(intent_id)
        return found[0] if found else None

    def _find(self, intent_id):
        """(path, document) of the file that defines the intent, or None. A file that does not
        parse is passed over here: validation names it when anything is saved."""
        for path in sorted(self.folder.glob("*.yaml")):
            try:
                doc = _parse(_read(path), path)
            except (KnowledgeError, OSError, UnicodeDecodeError):
                continue
            if _index(doc, intent_id) is not None:
                return path, doc
        return None

    def _validate_with(self, path, new_text):
        """Validate the whole folder as it would be with `path` holding `new_text` (None: without it)."""
        with tempfile.TemporaryDirectory() as tmp:
            for p in self.folder.glob("*.yaml"):
                shutil.copy(p, Path(tmp) / p.name)
            if new_text is None:
                (Path(tmp) / path.name).unlink(missing_ok=True)
            else:
                (Path(tmp) / path.name).write_text(new_text, encoding="utf-8")
            try:
                load(tmp)
            except KnowledgeError as exc:
                raise KnowledgeError([p.replace(tmp + "/", "").replace(tmp, "") for p in exc.problems]) from None

    def _write(self, path, new_text, who, action, intent_id):
        self._validate_with(path, new_text)
        before = _read(path) if path.exists() else ""
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".edit-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(new_text)
        os.replace(tmp, path)
        return self.redis.xadd(keys.KB_VERSIONS, {"file": path.name, "before": before, "after": new_text, "who": who,
                                                  "action": action, "intent": intent_id, "at": int(self.clock())},
                               maxlen=1000, approximate=True)

    def save(self, intent, who, expected=None):
        """Create or replace an intent; raise KnowledgeError (file:line problems) without writing.
        `expected`: the version the admin's form was opened on ('new' for a new intent); a different
        current version raises Conflict."""
        with self._locked():
            if expected is not None:
                current = self.version_of((intent.get("id") or "").strip())
                if expected == "new" and current != "new":
                    raise Conflict([f"ID「{intent.get('id')}」已存在：请换一个 ID，或去编辑那条问题。"])
                if expected != "new" and current != expected:
                    raise Conflict(["这条问题在您打开之后被别人改过了：请重新打开，看过最新内容后再改。"])
            return self._save(intent, who)

    def preview(self, intent):
        """What saving `intent` would write, without writing: (file name, text before, text after).
        Raises KnowledgeError (file:line problems) as save() would."""
        path, new_text = self._planned(intent)
        self._validate_with(path, new_text)
        return path.name, (_read(path) if path.exists() else ""), new_text

    def rollback_preview(self, version_id):
        """What rolling back `version_id` would do: (file name, text now, text after the rollback)."""
        f = self._version(version_id)
        path = self.folder / f["file"]
        return f["file"], (_read(path) if path.exists() else ""), f["before"]

    def _planned(self, intent):
        """(path, new text) of saving `intent`; raises KnowledgeError for a bad id."""
        intent = _cleaned(intent)
        if not ID_RE.fullmatch(intent["id"]):
            raise KnowledgeError(["id：必填，只能用小写字母、数字和下划线。"])
        path = self.source_of(intent["id"])
        if path:
            def change(doc):
                _update(_intents(doc)[_index(doc, intent["id"])], intent)
        else:
            path = self.folder / NEW_FILE

            def change(doc):
                _append(doc, intent, path)
        text = _read(path) if path.exists() else ""
        return path, _edited(text if text.strip() else NEW_FILE_TEXT, path, change)

    def _save(self, intent, who):
        path, new_text = self._planned(intent)
        intent_id = _cleaned(intent)["id"]
        return self._write(path, new_text, who, "edit" if self.source_of(intent_id) else "add", intent_id)

    def delete(self, intent_id, who):
        with self._locked():
            return self._delete(intent_id, who)

    def _delete(self, intent_id, who):
        path = self.source_of(intent_id)
        if path is None:
            raise KnowledgeError([f"没有 id 为「{intent_id}」的问题。"])

        def change(doc):
            _remove(doc["intents"], _index(doc, intent_id), doc, "intents")
        return self._write(path, _edited(_read(path), path, change), who, "delete", intent_id)

    def add_example(self, intent_id, example, who):
        """Add a shopper's question to an intent's examples, cleaned to one line (see _one_line)."""
        text = _one_line(example or "")
        if not text:
            raise KnowledgeError(["例句不能为空。"])
        with self._locked():
            kb = load(self.folder)
            intent = kb.intent(intent_id)
            if intent is None:
                raise KnowledgeError([f"没有 id 为「{intent_id}」的问题。"])
            return self._save({"id": intent.id, "title": intent.title, "examples": list(intent.examples) + [text],
                               "keywords": list(intent.keywords), "answer": intent.answer}, who)

    def history(self, count=50):
        return [dict(f, id=i) for i, f in self.redis.xrevrange(keys.KB_VERSIONS, count=count)]

    def rollback(self, version_id, who):
        """Put the file back as it was before `version_id` (validated; itself a new version)."""
        f = self._version(version_id)
        with self._locked():
            return self._rollback(f, who)

    def _version(self, version_id):
        """One recorded knowledge edit (file, before, after, who, action, intent, at)."""
        if not re.fullmatch(r"[0-9]{1,20}-[0-9]{1,20}", version_id or ""):
            raise KnowledgeError([f"没有这个版本：{version_id}。"])
        rows = self.redis.xrange(keys.KB_VERSIONS, version_id, version_id)
        if not rows:
            raise KnowledgeError([f"没有这个版本：{version_id}。"])
        return rows[0][1]

    def _rollback(self, f, who):
        path = self.folder / f["file"]
        if not f["before"]:
            self._validate_with(path, None)
            path.unlink(missing_ok=True)
            return self.redis.xadd(keys.KB_VERSIONS, {"file": f["file"], "before": f["after"], "after": "",
                                                      "who": who, "action": "rollback", "intent": f["intent"],
                                                      "at": int(self.clock())})
        return self._write(path, f["before"], who, "rollback", f["intent"])
