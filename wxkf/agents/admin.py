"""The console's admin pages: knowledge editing, its history, and the unanswered questions.

A blueprint of its own under /console/kb, behind the console's login and CSRF check and, for every
view it has, the admin role: a page added here cannot forget the check.
"""
import json

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from .. import keys
from ..dialogue.decision import Conversation, Message
from ..errors import KnowledgeError
from .console import accounts, guard, svc
from .kbedit import Conflict, KnowledgeEditor

bp = Blueprint("admin", __name__, url_prefix="/console/kb")


@bp.before_request
def _admins_only():
    refused = guard()
    if refused is not None:
        return refused
    if g.user["role"] != "admin":
        abort(403, "只有管理员能使用知识库页面。")
    return None


def editor():
    return KnowledgeEditor(svc().config.knowledge_dir, svc().redis)


def _lines(field):
    """One value per line, as typed: 「，」 stays 「，」 (examples are matched as shoppers write them)."""
    return [x.strip() for x in (request.form.get(field) or "").splitlines() if x.strip()]


@bp.get("")
def kb_list():
    q = (request.args.get("q") or "").strip()
    kb = svc().knowledge.get()
    intents = [i for i in kb.intents
               if not q or q in i.id or q in i.title or q in i.answer or any(q in e for e in i.examples)]
    unanswered = svc().redis.zrevrange(keys.UNANSWERED, 0, 19, withscores=True)
    return render_template("kb.html", intents=intents, q=q, unanswered=unanswered, review=_review(),
                           all_intents=kb.intents, test=None, kb_problems=_kb_problems(), kb=kb)


def _review():
    """Bot answers agents marked wrong, newest first: [(shopper text, details with the intent's title)]."""
    titles = {i.id: i.title for i in svc().knowledge.get().intents}
    rows = []
    for text, raw in svc().redis.hgetall(keys.REVIEW).items():
        r = json.loads(raw)
        r["title"] = titles.get(r.get("intent"), r.get("intent") or "（无）")
        rows.append((text, r))
    return sorted(rows, key=lambda row: -row[1].get("at", 0))[:50]


def _kb_problems():
    """What is wrong with the files on disk (the bot answers from the last good version meanwhile),
    with file names relative to the knowledge folder: no server paths on the page."""
    store = svc().knowledge
    error = store.last_error
    if error is None:
        return []
    prefix = str(store.folder) + "/"
    return [p.replace(prefix, "") for p in getattr(error, "problems", [str(error)])]


@bp.post("/test")
def kb_test():
    from ..dialogue.engine import DialogueEngine
    text = (request.form.get("text") or "").strip()
    engine = DialogueEngine(svc().knowledge)
    d = engine.decide(Message(kind="text", text=text), Conversation("console-test")) if text else None
    kb = svc().knowledge.get()
    return render_template("kb.html", intents=kb.intents, q="", all_intents=kb.intents, test={"text": text, "d": d},
                           unanswered=svc().redis.zrevrange(keys.UNANSWERED, 0, 19, withscores=True), review=_review(),
                           kb=kb)


@bp.route("/edit/<intent_id>", methods=["GET", "POST"])
@bp.route("/new", methods=["GET", "POST"], defaults={"intent_id": None})
def kb_edit(intent_id):
    kb = svc().knowledge.get()
    intent = kb.intent(intent_id) if intent_id else None
    if intent_id and intent is None and request.method == "GET":
        abort(404)
    form = {"id": intent.id if intent else request.args.get("id", ""), "title": intent.title if intent else "",
            "examples": "\n".join(intent.examples) if intent else request.args.get("example", ""),
            "keywords": "\n".join(intent.keywords) if intent else "",
            "answer": intent.answer if intent else request.args.get("answer", "")}
    form["version"] = editor().version_of(intent_id) if intent_id else "new"
    problems, status, diff = [], 200, None
    if request.method == "POST":
        form = {k: request.form.get(k, "") for k in ("id", "title", "examples", "keywords", "answer", "version")}
        if intent_id:
            form["id"] = intent_id
        if request.form.get("do") == "preview":  # show what would change; nothing is written
            try:
                name, before, after = editor().preview({
                    "id": form["id"], "title": form["title"], "examples": _lines("examples"),
                    "keywords": _lines("keywords"), "answer": form["answer"]})
                diff = _diff(before, after, name)
            except KnowledgeError as exc:
                problems, status = exc.problems, 400
            return render_template("kb_edit.html", form=form, problems=problems, existing=bool(intent_id),
                                   diff=diff, clashes=_clashes(form["id"], _lines("examples"))), status
        try:
            editor().save({"id": form["id"], "title": form["title"], "examples": _lines("examples"),
                           "keywords": _lines("keywords"), "answer": form["answer"]}, who=g.user["name"],
                          expected=form["version"] or ("new" if not intent_id else None))
        except Conflict as exc:
            problems, status = exc.problems, 409
        except KnowledgeError as exc:
            problems, status = exc.problems, 400
        else:
            accounts().audit(g.user["name"], "kb_save", form["id"])
            flash(f"已保存「{form['id']}」，1秒内生效。")
            return redirect(url_for("admin.kb_list"))
    return render_template("kb_edit.html", form=form, problems=problems, existing=bool(intent_id), diff=None), status


def _clashes(intent_id, examples, limit=20):
    """Examples the bot, as the knowledge base stands, would take for another intent: where two
    intents overlap, so the admin sees the conflict before saving. [(example, other intent's title)]."""
    from ..dialogue.engine import DialogueEngine
    engine = DialogueEngine(svc().knowledge)
    titles = {i.id: i.title for i in svc().knowledge.get().intents}
    out = []
    for text in examples[:limit]:
        d = engine.decide(Message(kind="text", text=text), Conversation("console-clash"))
        if d.source in ("knowledge", "generated") and d.intent and d.intent != intent_id:
            out.append((text, titles.get(d.intent, d.intent)))
    return out


def _diff(before, after, name):
    """Unified diff lines as (kind, text), kind one of add, del, hunk, same: for the diff views."""
    import difflib
    out = []
    for line in difflib.unified_diff(before.splitlines(), after.splitlines(), f"{name}（现在）", f"{name}（之后）",
                                     n=2, lineterm=""):
        kind = ("hunk" if line.startswith("@@") else "file" if line.startswith(("---", "+++"))
                else "add" if line.startswith("+") else "del" if line.startswith("-") else "same")
        out.append((kind, line))
    return out


def _apply(change, action, target, done, **detail):
    """Run one knowledge change for the logged-in admin: audit and confirm it, or show its problems."""
    try:
        change(who=g.user["name"])
    except KnowledgeError as exc:
        flash("；".join(exc.problems))
        return False
    accounts().audit(g.user["name"], action, target, **detail)
    flash(done)
    return True


@bp.post("/delete/<intent_id>")
def kb_delete(intent_id):
    _apply(lambda who: editor().delete(intent_id, who=who), "kb_delete", intent_id,
           f"已删除「{intent_id}」，可在历史中回滚。")
    return redirect(url_for("admin.kb_list"))


@bp.get("/history")
def kb_history():
    return render_template("kb_history.html", versions=editor().history())


@bp.get("/rollback/<version>")
def kb_rollback_preview(version):
    """What a rollback would change in the file, before the admin confirms it."""
    try:
        name, now, after = editor().rollback_preview(version)
    except KnowledgeError as exc:
        flash("；".join(exc.problems))
        return redirect(url_for("admin.kb_history"))
    return render_template("kb_rollback.html", version=version, name=name, diff=_diff(now, after, name),
                           removes_file=not after)


@bp.post("/rollback/<version>")
def kb_rollback(version):
    _apply(lambda who: editor().rollback(version, who=who), "kb_rollback", version, "已回滚。")
    return redirect(url_for("admin.kb_history"))


@bp.post("/example")
def kb_add_example():
    """Turn an unanswered question into an example of an intent."""
    text, intent_id = (request.form.get("text") or "").strip(), request.form.get("intent", "")
    if not intent_id:
        flash("请先选择要加入的意图。")
        return redirect(url_for("admin.kb_list"))
    if _apply(lambda who: editor().add_example(intent_id, text, who=who), "kb_add_example", intent_id,
              f"已把「{text}」加入「{intent_id}」的例句。", text=text):
        svc().redis.zrem(keys.UNANSWERED, text)
        svc().redis.hdel(keys.REVIEW, text)
    return redirect(url_for("admin.kb_list"))


@bp.post("/unanswered/dismiss")
def kb_dismiss():
    """Drop an unanswered question, or a marked answer, that needs nothing done (noise, a test)."""
    text = request.form.get("text") or ""
    if svc().redis.zrem(keys.UNANSWERED, text) + svc().redis.hdel(keys.REVIEW, text):
        accounts().audit(g.user["name"], "kb_dismiss", "", text=text[:60])
        flash(f"已忽略「{text[:30]}」。")
    return redirect(url_for("admin.kb_list"))
