"""The shop's knowledge base: every `*.yaml` file in a folder, validated with file:line errors.

`KnowledgeStore` reloads changed files without a restart; a broken edit is reported and the last
good knowledge base stays in use, so an admin's typo never takes the bot down.
"""
import dataclasses
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import yaml

from ..errors import KnowledgeError
from . import variables

log = logging.getLogger("wxkf.knowledge")

ID_RE = re.compile(r"[a-z0-9_]+")

DEFAULT_CANNED = {
    "image": "我暂时看不了图片，麻烦用文字描述一下您的问题，我马上帮您看看。",
    "voice": "我暂时听不了语音，麻烦打字告诉我您的问题。",
    "video": "我暂时看不了视频，麻烦用文字描述一下您的问题。",
    "file": "我暂时打不开文件，麻烦用文字描述一下您的问题。",
    "location": "收到您的位置。请问需要帮您查询配送范围还是修改收货地址？",
    "link": "收到您分享的链接。请问您想了解其中的什么问题？",
    "miniprogrampage": "收到您分享的「{title}」，请问想了解它的哪方面？尺码、库存、发货还是售后？",
}
DEFAULT_FALLBACK = "抱歉，这个问题我还回答不了。回复「转人工」可以联系人工客服。"
"""Promises nothing that has not happened: no person is queued by a fallback (repeated failure is)."""
DEFAULT_THANKS = "不客气，还有其他问题随时问我。"
DEFAULT_ESCALATION_REPLY = "已为您转接人工客服，请稍候。"
DEFAULT_WELCOME = "您好，请问有什么可以帮您？"


@dataclasses.dataclass(frozen=True)
class Intent:
    id: str
    title: str
    examples: tuple
    answer: str
    keywords: tuple = ()
    source: str = ""


@dataclasses.dataclass(frozen=True)
class KnowledgeBase:
    intents: tuple
    persona: str = ""
    fallback: str = DEFAULT_FALLBACK
    welcome: str = DEFAULT_WELCOME
    thanks: str = DEFAULT_THANKS
    escalation_keywords: tuple = ()
    escalation_reply: str = DEFAULT_ESCALATION_REPLY
    synonyms: tuple = ()
    packs: tuple = ()
    canned: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_CANNED))
    live: dict = dataclasses.field(default_factory=dict)
    """Variables, service hours, timezone, promotion, after-hours reply (`variables.parse`)."""

    def intent(self, intent_id):
        return next((i for i in self.intents if i.id == intent_id), None)

    def render(self, text, now=None):
        """`text` with its `{{variables}}` filled in for now (never sent with braces)."""
        return variables.render(text, self.live, now)

    def escalation_text(self, now=None):
        """What a shopper handed to humans is told: outside service hours, when people will answer."""
        return variables.escalation_text(self.escalation_reply, self.live, now)

    def answer(self, text, intent_id, now=None):
        """An approved answer as sent: variables filled in, and the current promotion's line for
        the intents it is for."""
        return variables.with_promotion(self.render(text, now), intent_id, self.live, now)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping as `__line__`."""


def _construct_mapping(loader, node, deep=False):
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# Dates stay text (validated where they are used): PyYAML would raise a bare ValueError on a
# date-shaped typo such as 2026-13-01 instead of a file:line problem.
_LineLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _str_list(value):
    return isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value)


def _check_text(where, key, value, problems, required=True):
    if value is None:
        if required:
            problems.append(f"{where}: 缺少「{key}」")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: 「{key}」必须是非空的文字")
        return None
    return value.strip()


YAML_PROBLEMS = (
    ("mapping values are not allowed", "这里不能出现「键: 值」：文字里有冒号时请给整句加引号，或检查缩进"),
    ("could not find expected ':'", "缺少冒号「:」，或上一行的引号没有配对"),
    ("cannot start any token", "用了 Tab 缩进或特殊字符开头：请用空格缩进，特殊字符开头的文字请加引号"),
    ("found unexpected end of stream", "引号没有配对"),
    ("expected ',' or ']'", "方括号 [ ] 没有配对"),
    ("expected ',' or '}'", "花括号 { } 没有配对"),
    ("did not find expected key", "缩进不齐：同一层的键要对齐"),
    ("expected <block end>", "缩进不齐：同一层的键要对齐"),
    ("did not find expected '-' indicator", "列表缩进不齐：同一列表的「- 」要对齐"),
    ("found duplicate anchor", "锚点（&）重复"),
    ("found undefined alias", "引用（*）了不存在的锚点"),
)


def yaml_problem(exc):
    """PyYAML's complaint, in the admins' words, with what usually causes it."""
    raw = str(getattr(exc, "problem", None) or exc)
    return next((zh for en, zh in YAML_PROBLEMS if en in raw), f"无法解析（{raw}）")


def load_file(path, problems):
    """Parse one file; append 'file:line: message' problems; return its raw document or None."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: 无法读取（{type(exc).__name__}），请确认文件存在并以 UTF-8 保存")
        return None
    try:
        doc = yaml.load(text, Loader=_LineLoader)
    except (yaml.YAMLError, ValueError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problems.append(f"{path}{line}: YAML 格式错误：{yaml_problem(exc)}")
        return None
    if doc is None:
        # An emptied file would silently take its intents away; deleting the file says so on purpose.
        problems.append(f"{path}:1: 文件是空的（要去掉其中的问题，请删除这个文件）")
        return None
    if not isinstance(doc, dict):
        problems.append(f"{path}:1: 文件内容必须是「键: 值」的形式，例如以 intents: 开头")
        return None
    return doc


KNOWN_TOP = {"persona", "intents", "escalation", "fallback", "welcome", "thanks", "synonyms", "packs", "canned",
             "variables", "hours", "timezone", "promotion", "__line__"}


def build(paths):
    """Validate and merge the files; raise KnowledgeError with every problem found."""
    problems, intents, seen = [], [], {}
    from .lexicon import PACKS
    merged = {"synonyms": [], "escalation_keywords": [], "packs": [], "canned": dict(DEFAULT_CANNED)}
    live, texts, wheres = {"variables": {}}, [], {}  # texts: [(where, text)] that may hold {{variables}}
    if not paths:
        raise KnowledgeError(["知识库文件夹中没有 *.yaml 文件"])
    for path in paths:
        doc = load_file(path, problems)
        if not doc:
            continue
        for key in doc:
            if key not in KNOWN_TOP:
                problems.append(f"{path}:{doc['__line__']}: 未知的键「{key}」（可用：{', '.join(sorted(KNOWN_TOP - {'__line__'}))}）")
        for key in ("persona", "fallback", "welcome", "thanks"):
            if key in doc:
                value = _check_text(f"{path}:{doc['__line__']}", key, doc[key], problems)
                if value:
                    merged[key] = value
                    texts.append((f"{path}:{doc['__line__']}", value))
        part = variables.parse(doc, f"{path}:{doc['__line__']}", problems)
        for name, var in part.pop("variables", {}).items():
            if name in live["variables"]:
                problems.append(f"{path}:{doc['__line__']}: 变量「{name}」在多个文件中定义")
            live["variables"][name] = var
        for key, value in part.items():
            if key in live:
                problems.append(f"{path}:{doc['__line__']}: 「{key}」在多个文件中定义")
            live[key] = value
            wheres[key] = f"{path}:{doc['__line__']}"
            if key == "promotion":
                texts.append((wheres[key], value["text"]))
        esc = doc.get("escalation")
        if esc is not None:
            where = f"{path}:{esc.get('__line__', doc['__line__']) if isinstance(esc, dict) else doc['__line__']}"
            if not isinstance(esc, dict):
                problems.append(f"{where}: 「escalation」必须包含 keywords（词语列表）和 reply（回复）")
            else:
                if "keywords" in esc:
                    if _str_list(esc["keywords"]):
                        merged["escalation_keywords"] += [str(k) for k in esc["keywords"]]
                    else:
                        problems.append(f"{where}: escalation 的「keywords」必须是词语列表")
                if "reply" in esc:
                    value = _check_text(where, "reply", esc["reply"], problems)
                    if value:
                        merged["escalation_reply"] = value
                        texts.append((where, value))
                if "after_hours_reply" in esc:
                    value = _check_text(where, "after_hours_reply", esc["after_hours_reply"], problems)
                    if value:
                        live["after_hours_reply"] = value
                        wheres["after_hours_reply"] = where
                        texts.append((where, value))
        syn = doc.get("synonyms")
        if syn is not None:
            if not isinstance(syn, list) or not all(_str_list(g) and len(g) >= 2 for g in syn):
                problems.append(f"{path}:{doc['__line__']}: 「synonyms」必须是词组列表，每组至少两个词")
            else:
                merged["synonyms"] += [tuple(str(w) for w in g) for g in syn]
        packs = doc.get("packs")
        if packs is not None:
            if not _str_list(packs) or any(str(p) not in PACKS for p in packs):
                problems.append(f"{path}:{doc['__line__']}: 「packs」必须是词库列表"
                                f"（可用：{', '.join(sorted(PACKS))}）")
            else:
                merged["packs"] += [str(p) for p in packs if str(p) not in merged["packs"]]
        canned = doc.get("canned")
        if canned is not None:
            if not isinstance(canned, dict):
                problems.append(f"{path}:{doc['__line__']}: 「canned」必须是「消息类型: 回复」的形式")
            else:
                for k, v in canned.items():
                    if k == "__line__":
                        continue
                    if k not in DEFAULT_CANNED:
                        problems.append(f"{path}:{canned['__line__']}: canned 中的消息类型「{k}」不存在（可用：{', '.join(DEFAULT_CANNED)}）")
                    elif _check_text(f"{path}:{canned['__line__']}", k, v, problems):
                        merged["canned"][k] = v.strip()
        raw_intents = doc.get("intents", [])
        if not isinstance(raw_intents, list):
            problems.append(f"{path}:{doc['__line__']}: 「intents」必须是列表")
            continue
        for raw in raw_intents:
            if not isinstance(raw, dict):
                problems.append(f"{path}: intents 下的每一项都必须包含 id、title、examples、answer")
                continue
            where = f"{path}:{raw['__line__']}"
            iid = raw.get("id")
            if not isinstance(iid, str) or not ID_RE.fullmatch(iid):
                problems.append(f"{where}: 缺少「id」或格式不对：只能用小写字母、数字和下划线")
                continue
            if iid in seen:
                problems.append(f"{where}: 问题 id「{iid}」重复（第一次出现在 {seen[iid]}）")
                continue
            seen[iid] = where
            for key in raw:
                if key not in ("id", "title", "examples", "answer", "keywords", "__line__"):
                    problems.append(f"{where}: 问题「{iid}」中有未知的键「{key}」（可用：id、title、examples、answer、keywords）")
            title = _check_text(where, "title", raw.get("title"), problems)
            answer = _check_text(where, "answer", raw.get("answer"), problems)
            examples = raw.get("examples")
            if not _str_list(examples) or not [e for e in examples if str(e).strip()]:
                problems.append(f"{where}: 问题「{iid}」需要「examples」：至少一条顾客的说法")
                continue
            keywords = raw.get("keywords", [])
            if not _str_list(keywords):
                problems.append(f"{where}: 「keywords」必须是词语列表")
                keywords = []
            if answer:
                texts.append((where, answer))
            if title and answer:
                intents.append(Intent(iid, title, tuple(str(e).strip() for e in examples if str(e).strip()),
                                      answer, tuple(str(k) for k in keywords), where))
    if not intents and not problems:
        problems.append("知识库里还没有任何问题（intents）")
    if "promotion" in live:
        ids = {i.id for i in intents}
        missing = [i for i in live["promotion"]["intents"] if i not in ids]
        if missing and intents:
            problems.append(f"{wheres['promotion']}: promotion 的 intents 中「{'、'.join(missing)}」不是已有的问题 id")
    if live.get("after_hours_reply") and "hours" not in live:
        problems.append(f"{wheres['after_hours_reply']}: 设置了 after_hours_reply 但没有设置 hours（人工服务时间）")
    texts += [(f"canned.{k}", v) for k, v in merged["canned"].items()]
    variables.check_used(live, texts, variables.Clock(live).now.date(), problems)
    if problems:
        raise KnowledgeError(problems)
    return KnowledgeBase(
        intents=tuple(intents), persona=merged.get("persona", ""),
        fallback=merged.get("fallback", DEFAULT_FALLBACK), welcome=merged.get("welcome", DEFAULT_WELCOME),
        thanks=merged.get("thanks", DEFAULT_THANKS),
        escalation_keywords=tuple(merged["escalation_keywords"]),
        escalation_reply=merged.get("escalation_reply", DEFAULT_ESCALATION_REPLY),
        synonyms=tuple(merged["synonyms"]), packs=tuple(merged["packs"]), canned=merged["canned"], live=live)


def yaml_files(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise KnowledgeError([f"{folder}: 找不到知识库文件夹"])
    return sorted(p for p in folder.glob("*.yaml") if p.is_file())


def load(folder):
    return build(yaml_files(folder))


RELOAD_SECONDS = 1.0
"""Seconds between checks of the knowledge folder for changed files (an admin's save is live within it)."""


class KnowledgeStore:
    """The current knowledge base, reloaded when a file in the folder changes.

    With `snapshot` (a file under var/), every good load is saved there, and a knowledge base that is
    broken at start-up is replaced by the last good one, with the problems logged as errors and kept
    in `last_error`, so a typo never keeps the bot or the console from starting."""

    def __init__(self, folder, interval=RELOAD_SECONDS, snapshot=None):
        self.folder = Path(folder)
        self.interval = interval
        self.snapshot = Path(snapshot) if snapshot else None
        self._lock = threading.Lock()
        self._stamp = self._fingerprint()
        self.last_error = None
        try:
            self._kb = load(self.folder)
            self._save_snapshot()
        except KnowledgeError as exc:
            kb = self._load_snapshot()
            if kb is None:
                raise  # no knowledge and none remembered: no bot
            self._kb, self.last_error = kb, exc
            log.error("knowledge base broken at start-up; answering from the last good version (%d intents) "
                      "until it is fixed: %s", len(kb.intents), exc)
        self._checked = time.monotonic()

    def _fingerprint(self):
        try:
            return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in yaml_files(self.folder))
        except (KnowledgeError, OSError):
            return ()

    def _save_snapshot(self):
        if self.snapshot is None:
            return
        try:
            self.snapshot.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.snapshot.with_suffix(".tmp")
            tmp.write_text(json.dumps(dataclasses.asdict(self._kb), ensure_ascii=False))
            os.replace(tmp, self.snapshot)
        except OSError as exc:
            log.warning("could not save the knowledge snapshot %s: %s", self.snapshot, exc)

    def _load_snapshot(self):
        if self.snapshot is None or not self.snapshot.is_file():
            return None
        try:
            data = json.loads(self.snapshot.read_text())
            intents = tuple(Intent(**dict(i, examples=tuple(i["examples"]), keywords=tuple(i["keywords"])))
                            for i in data.pop("intents"))
            for key in ("escalation_keywords", "packs"):
                data[key] = tuple(data.get(key, ()))
            data["synonyms"] = tuple(tuple(g) for g in data.get("synonyms", ()))
            return KnowledgeBase(intents=intents, **data)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("the knowledge snapshot %s is unreadable: %s", self.snapshot, exc)
            return None

    def get(self):
        now = time.monotonic()
        if now - self._checked >= self.interval:
            with self._lock:
                self._checked = now
                stamp = self._fingerprint()
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._kb = load(self.folder)
                        self.last_error = None
                        self._save_snapshot()
                        log.info("knowledge reloaded: %d intents", len(self._kb.intents))
                    except KnowledgeError as exc:
                        self.last_error = exc
                        log.error("knowledge reload failed, keeping the previous version: %s", exc)
        return self._kb
