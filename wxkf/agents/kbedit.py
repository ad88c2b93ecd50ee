"""Knowledge editing from the console: validated, atomic, versioned, comments kept.

An edit replaces only the YAML block of the one intent it touches (the rest of the file, comments
included, stays byte for byte); new intents go to `console.yaml`. The whole folder is validated with
the same code as `wxkf kb check` before anything is written, the write is atomic (temp file +
rename), and every change is recorded with who/when and the file's previous text, so any version can
be rolled back in one step. Processes pick the change up within a second (KnowledgeStore reload).
"""
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from .. import keys
from ..dialogue.knowledge import ID_RE, load
from ..errors import KnowledgeError

NEW_FILE = "console.yaml"


def _quote(text):
    return json.dumps(str(text), ensure_ascii=False)  # a JSON string is a valid YAML scalar


def render_intent(intent, indent="  "):
    inner = indent + "  "
    lines = [f"{indent}- id: {intent['id']}", f"{inner}title: {_quote(intent['title'])}", f"{inner}examples:"]
    lines += [f"{inner}  - {_quote(e)}" for e in intent["examples"]]
    if intent.get("keywords"):
        lines.append(f"{inner}keywords: [{', '.join(_quote(k) for k in intent['keywords'])}]")
    lines.append(f"{inner}answer: {_quote(intent['answer'])}")
    return "\n".join(lines) + "\n"


def _block(text, intent_id):
    """(start, end, indent) of the intent's list item in the file text, or None."""
    lines = text.splitlines(keepends=True)
    pat = re.compile(rf"^(\s*)-\s+id:\s*['\"]?{re.escape(intent_id)}['\"]?\s*(#.*)?$")
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line)
    for i, line in enumerate(lines):
        m = pat.match(line.rstrip("\n"))
        if not m:
            continue
        indent = len(m.group(1))
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            lead = len(lines[j]) - len(lines[j].lstrip())
            if stripped and (lead < indent or (lead == indent and stripped.startswith("-"))) \
                    and not stripped.startswith("#"):
                break
            j += 1
        # Trailing blank and comment lines belong to what follows.
        while j > i + 1 and (not lines[j - 1].strip() or lines[j - 1].strip().startswith("#")):
            j -= 1
        return offsets[i], offsets[j] if j < len(lines) else len(text), m.group(1)
    return None


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
        path = self.source_of(intent_id) if intent_id else None
        if path is None:
            return "new"
        text = path.read_text(encoding="utf-8")
        start, end, _ = _block(text, intent_id)
        return hashlib.sha1(text[start:end].encode("utf-8")).hexdigest()[:16]

    def source_of(self, intent_id):
        for path in sorted(self.folder.glob("*.yaml")):
            if _block(path.read_text(encoding="utf-8"), intent_id):
                return path
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
                raise KnowledgeError([p.replace(tmp, str(self.folder)) for p in exc.problems]) from None

    def _write(self, path, new_text, who, action, intent_id):
        self._validate_with(path, new_text)
        before = path.read_text(encoding="utf-8") if path.exists() else ""
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".edit-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
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

    def _save(self, intent, who):
        intent = {"id": (intent.get("id") or "").strip(), "title": (intent.get("title") or "").strip(),
                  "examples": [e.strip() for e in intent.get("examples", []) if e.strip()],
                  "keywords": [k.strip() for k in intent.get("keywords", []) if k.strip()],
                  "answer": (intent.get("answer") or "").strip()}
        if not ID_RE.fullmatch(intent["id"]):
            raise KnowledgeError(["id: required, lower-case letters, digits and _"])
        path = self.source_of(intent["id"])
        if path:
            text = path.read_text(encoding="utf-8")
            start, end, indent = _block(text, intent["id"])
            new_text = text[:start] + render_intent(intent, indent) + text[end:]
            action = "edit"
        else:
            path = self.folder / NEW_FILE
            text = path.read_text(encoding="utf-8") if path.exists() else (
                "# Intents added from the console. Edit here or in the console.\nintents:\n")
            new_text = text.rstrip("\n") + "\n" + render_intent(intent)
            action = "add"
        return self._write(path, new_text, who, action, intent["id"])

    def delete(self, intent_id, who):
        with self._locked():
            return self._delete(intent_id, who)

    def _delete(self, intent_id, who):
        path = self.source_of(intent_id)
        if path is None:
            raise KnowledgeError([f"no intent {intent_id!r}"])
        text = path.read_text(encoding="utf-8")
        start, end, _ = _block(text, intent_id)
        return self._write(path, text[:start] + text[end:], who, "delete", intent_id)

    def add_example(self, intent_id, example, who):
        with self._locked():
            kb = load(self.folder)
            intent = kb.intent(intent_id)
            if intent is None:
                raise KnowledgeError([f"no intent {intent_id!r}"])
            return self._save({"id": intent.id, "title": intent.title, "examples": list(intent.examples) + [example],
                               "keywords": list(intent.keywords), "answer": intent.answer}, who)

    def history(self, count=50):
        return [dict(f, id=i) for i, f in self.redis.xrevrange(keys.KB_VERSIONS, count=count)]

    def rollback(self, version_id, who):
        """Put the file back as it was before `version_id` (validated; itself a new version)."""
        if not re.fullmatch(r"[0-9]{1,20}-[0-9]{1,20}", version_id or ""):
            raise KnowledgeError([f"no version {version_id!r}"])
        rows = self.redis.xrange(keys.KB_VERSIONS, version_id, version_id)
        if not rows:
            raise KnowledgeError([f"no version {version_id!r}"])
        with self._locked():
            return self._rollback(rows[0][1], who)

    def _rollback(self, f, who):
        path = self.folder / f["file"]
        if not f["before"]:
            self._validate_with(path, None)
            path.unlink(missing_ok=True)
            return self.redis.xadd(keys.KB_VERSIONS, {"file": f["file"], "before": f["after"], "after": "",
                                                      "who": who, "action": "rollback", "intent": f["intent"],
                                                      "at": int(self.clock())})
        return self._write(path, f["before"], who, "rollback", f["intent"])
