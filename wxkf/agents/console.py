"""`/console/`: the agent console. Views parse and hand off; state lives in Handoffs and Accounts."""
import hmac
import json
import os
import re
import secrets
import time
import uuid

from flask import (Blueprint, abort, current_app, flash, g, jsonify, redirect, render_template, request,
                   session, url_for)

from .. import keys
from .accounts import Accounts

_SAFE_NEXT = re.compile(r"/console/[A-Za-z0-9_./%-]*")
"""Where a login may send the user on: console paths only, no newline, no scheme, no '//'."""

bp = Blueprint("console", __name__, url_prefix="/console")

CHANNEL_NAMES = {"wechat": "小程序/公众号", "wecom": "企业微信客服", "page": "小程序聊天页"}


def svc():
    return current_app.extensions["wxkf"]


def accounts():
    return Accounts(svc().redis)


# -- authentication and CSRF ----------------------------------------------------------------------
def csrf_token():
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


@bp.app_context_processor
def _inject():
    return {"csrf_token": csrf_token, "me": g.get("user"), "live_ticket": _live_ticket, "live_base": _live_base,
            "live_port": lambda: int(svc().config.live_bind.rsplit(":", 1)[1])}


def _live_ticket():
    from ..live import ticket
    return ticket(g.user["name"], session.get("sid", "")) if g.get("user") else ""


def _live_base():
    """Where the page opens its event stream: `live_url`; the console's own address behind a proxy
    (the block `wxkf nginx-conf` prints routes /console/events to the live process); else None, and
    the page uses its own host at live_bind's port."""
    cfg = svc().config
    if cfg.live_url:
        return cfg.live_url.rstrip("/")
    return "" if cfg.trusted_proxies else None


@bp.before_request
def guard():
    """Every console page (and the admin blueprint's): a live login, and a CSRF token on POSTs."""
    g.user = None
    name = session.get("user")
    if name:
        # The signed cookie alone is not enough: its session id must still be open (logout revokes it).
        g.user = accounts().get(name) if accounts().session_user(session.get("sid")) == name else None
        if g.user is None:
            session.clear()
    if request.method == "POST":
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token", "")
        if not session.get("csrf") or not hmac.compare_digest(sent, session["csrf"]):
            abort(400, "表单已过期或来源不明（CSRF 校验未通过），请刷新页面后重试。")
    if request.endpoint in ("console.login",):
        return None
    if g.user is None:
        if request.path.startswith("/console/api/"):
            return jsonify(error="login required"), 401
        return redirect(url_for("console.login", next=request.path))
    return None


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        name, password = request.form.get("name", ""), request.form.get("password", "")
        acc = accounts()
        address = request.remote_addr or "?"
        if acc.locked(name, address):
            return render_template("login.html", error="尝试次数过多，请15分钟后再试。"), 429
        user = acc.login(name, password, address)
        if user:
            session.clear()
            session["user"] = user["name"]
            session["sid"] = acc.open_session(user["name"])
            session.permanent = True
            acc.audit(user["name"], "login")
            nxt = request.args.get("next", "")
            return redirect(nxt if _SAFE_NEXT.fullmatch(nxt) and ".." not in nxt else url_for("console.queue"))
        error = "用户名或密码错误。"
    return render_template("login.html", error=error), (401 if error else 200)


@bp.post("/logout")
def logout():
    accounts().close_session(session.get("sid"))
    session.clear()
    return redirect(url_for("console.login"))


# -- the queue ------------------------------------------------------------------------------------
def _queue_rows():
    queue, expired = svc().handoffs.queue()
    now = time.time()
    rows = []
    for q in queue:
        said = [t for t in svc().handoffs.transcript(q["openid"]) if t.get("role") == "shopper"]
        last = said[-1:] or [{}]  # what the shopper said last, not the bot's handoff line
        rows.append({"openid": q["openid"], "channel": svc().channel_of(q["openid"]), "reason": q.get("reason", ""),
                     "priority": int(q.get("priority", 0)),
                     "status": q.get("status", ""), "agent": q.get("agent", ""),
                     "waiting_seconds": int(now - float(q.get("since", now))),
                     "last": (last[0].get("text") or "")[:80]})
    return rows, expired


@bp.get("/")
def queue():
    rows, expired = _queue_rows()
    return render_template("queue.html", rows=rows, expired=expired, channel_names=CHANNEL_NAMES)


@bp.get("/api/queue")
def api_queue():
    rows, expired = _queue_rows()
    return jsonify(queue=rows, returned_to_bot=expired)


# -- every conversation ---------------------------------------------------------------------------
PAGE_SIZE = 30
SCAN_LIMIT = 3000
"""Conversations searched per query, newest first: a week of a small shop's chats (transcripts live
7 days). Narrow by date for older ones."""


def _day(value, end=False):
    """'YYYY-MM-DD' (local time) -> the timestamp of its start (or end); None when empty or not a date."""
    try:
        start = time.mktime(time.strptime(value or "", "%Y-%m-%d"))
    except ValueError:
        return None
    return start + 86400 - 0.001 if end else start


@bp.get("/conversations")
def conversations():
    """Every conversation, live and past, with search (id or text, date range) and filters (status,
    reason, agent, channel), newest first, paginated."""
    a = request.args
    q = (a.get("q") or "").strip()[:100]
    status, reason, channel = a.get("status", ""), a.get("reason", ""), a.get("channel", "")
    agent = (a.get("agent") or "").strip()[:64]
    since, until = _day(a.get("from")), _day(a.get("to"), end=True)
    bad_dates = [d for d in (a.get("from"), a.get("to")) if d and _day(d) is None]
    page = int(a.get("page")) if (a.get("page") or "").isdigit() and int(a.get("page")) > 0 else 1
    h = svc().handoffs
    found = []
    for openid, at in h.conversations(since, until)[:SCAN_LIMIT]:
        state = h.get(openid)
        if (status == "human" and not state) or (status == "bot" and state):
            continue
        ch = svc().channel_of(openid) if channel or len(found) < page * PAGE_SIZE else None
        if channel and ch != channel:
            continue
        transcript = None
        if reason or agent or (q and q not in openid):
            transcript = h.transcript(openid)
            if q and q not in openid and not any(q in (t.get("text") or "") for t in transcript):
                continue
            if reason and reason not in {t.get("reason") for t in transcript} | {(state or {}).get("reason")}:
                continue
            if agent and agent not in {t.get("agent") for t in transcript} | {(state or {}).get("agent")}:
                continue
        found.append((openid, at, state, ch, transcript))
    rows = []
    for openid, at, state, ch, transcript in found[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]:
        transcript = transcript if transcript is not None else h.transcript(openid)
        said = [t for t in transcript if t.get("role") == "shopper"]
        reasons = [t["reason"] for t in transcript if t.get("reason")]
        rows.append({"openid": openid, "channel": ch or svc().channel_of(openid), "at": at, "state": state,
                     "reason": (state or {}).get("reason") or (reasons[-1] if reasons else ""),
                     "agent": (state or {}).get("agent") or next((t["agent"] for t in reversed(transcript)
                                                                  if t.get("role") == "agent" and t.get("agent")), ""),
                     "last": (said[-1].get("text") or "")[:80] if said else "", "lines": len(transcript)})
    args = {k: v for k, v in a.items() if k != "page" and v}
    return render_template("conversations.html", rows=rows, total=len(found), page=page,
                           pages=max(1, -(-len(found) // PAGE_SIZE)), args=args, bad_dates=bad_dates,
                           channel_names=CHANNEL_NAMES)


# -- one conversation -----------------------------------------------------------------------------
def _openid(openid):
    if not openid or len(openid) > 64 or not all(c.isalnum() or c in "-_" for c in openid):
        abort(404)
    return openid


@bp.get("/c/<openid>")
def conversation(openid):
    openid = _openid(openid)
    h = svc().handoffs
    transcript = h.transcript(openid)
    return render_template("conversation.html", openid=openid, state=h.get(openid), transcript=transcript,
                           remaining=svc().sender_for(openid).remaining(openid), reply_id=uuid.uuid4().hex,
                           channel=svc().channel_of(openid), channel_names=CHANNEL_NAMES,
                           customer=_customer(openid, transcript))


def _customer(openid, transcript):
    """The customer panel: first seen, messages, earlier handoffs and who handled them, the WeCom
    account (from the last 7 days of transcript, which is what wxkf keeps)."""
    said = [t for t in transcript if t.get("role") == "shopper"]
    return {"first": transcript[0]["at"] if transcript else None,
            "messages": len(said),
            "handoffs": sum(1 for t in transcript if t.get("role") == "system" and t.get("reason")),
            "agents": sorted({t["agent"] for t in transcript if t.get("role") == "agent" and t.get("agent")}),
            "wecom_account": svc().kf.account_of(openid) if svc().kf is not None else None}


@bp.get("/api/c/<openid>")
def api_conversation(openid):
    openid = _openid(openid)
    h = svc().handoffs
    return jsonify(state=h.get(openid), transcript=h.transcript(openid), remaining=svc().sender_for(openid).remaining(openid),
                   channel=svc().channel_of(openid))


@bp.post("/c/<openid>/<action>")
def act(openid, action):
    openid = _openid(openid)
    h, me = svc().handoffs, g.user["name"]
    if action == "claim":
        if not h.held(openid):
            flash("这个会话已交还机器人。")
        else:
            h.touch(openid, agent=me, claim=True)
            h.log(openid, "system", f"{me} 接入了会话")
    elif action == "reply":
        text = (request.form.get("text") or "").strip()
        reply_id = request.form.get("reply_id") or uuid.uuid4().hex
        if not text:
            flash("回复内容不能为空。")
        elif len(reply_id) > 64:
            abort(400, "回复编号过长。")
        elif svc().sender_for(openid).remaining(openid) == 0:
            flash("未发送：48小时窗口已关闭或5条额度已用完。")
            h.log(openid, "system", f"客服回复未发送（48小时窗口已关闭或5条额度已用完）：{text}", agent=me)
        else:
            # Queued for the worker: this process acknowledges pushes and never waits on WeChat.
            svc().outbox.submit(openid, text, me, reply_id)
            if h.held(openid):
                record_first_response(openid)
                h.touch(openid, agent=me)
    elif action == "note":
        text = (request.form.get("text") or "").strip()
        if text:
            h.log(openid, "note", text, agent=me)
            if h.held(openid):
                h.touch(openid, agent=me)
    elif action == "wrong":
        _mark_wrong(openid, request.form.get("at", ""), me)
    elif action in ("resolve", "handback"):
        if h.end(openid, "已解决" if action == "resolve" else f"{me} 交还机器人", who=me):
            flash("会话已解决，已交还机器人。" if action == "resolve" else "已交还机器人。")
        else:
            flash("这个会话已交还机器人。")
    else:
        abort(404)
    accounts().audit(me, action, openid)
    return redirect(url_for("console.conversation", openid=openid))


def _mark_wrong(openid, at, me):
    """An agent says a bot answer was wrong: it goes to the admins' review list with what the shopper
    had asked, so the knowledge base can be fixed in one step."""
    transcript = svc().handoffs.transcript(openid)
    index = next((i for i, t in enumerate(transcript) if t.get("role") == "bot" and str(t.get("at")) == at), None)
    if index is None:
        flash("找不到这条机器人回复（可能已过期）。")
        return
    asked = next((t.get("text") for t in reversed(transcript[:index]) if t.get("role") == "shopper"), "")
    if not asked:
        flash("这条回复前没有顾客的问题，无法标记。")
        return
    bot = transcript[index]
    svc().redis.hset(keys.REVIEW, asked[:500], json.dumps(
        {"intent": bot.get("intent") or "", "answer": (bot.get("text") or "")[:500], "source": bot.get("source", ""),
         "by": me, "at": int(time.time()), "openid": openid}, ensure_ascii=False))
    svc().handoffs.log(openid, "note", f"标记机器人答错：「{asked[:60]}」", agent=me)
    flash("已标记为答错，管理员会在知识库页的待复核列表中看到。")


@bp.get("/stats")
def stats():
    """Statistics for agents and admins: replies per day by source, escalations, first response."""
    r = svc().redis
    days = []
    today = int(time.time() // 86400)
    for d in range(today - 13, today + 1):
        row = r.hgetall(keys.stats_day(d))
        days.append({"day": time.strftime("%m-%d", time.gmtime(d * 86400)), **{k: int(v) for k, v in row.items()}})
    sources = ("knowledge", "generated", "suggest", "fallback", "escalate")
    for day in days:
        day["total"] = sum(day.get(s, 0) for s in sources)
    totals = {s: sum(day.get(s, 0) for day in days) for s in sources}
    reasons = {k.split(":", 1)[1]: int(v) for k, v in r.hgetall(keys.STATS_TOTAL).items() if k.startswith("reason:")}
    waits = sorted(float(x) for x in r.lrange(keys.FIRST_RESPONSE, 0, -1))
    median = waits[len(waits) // 2] if waits else None
    top = r.zrevrange(keys.UNANSWERED, 0, 9, withscores=True)
    peak = max([day["total"] for day in days] + [1])
    return render_template("stats.html", days=days, sources=sources, totals=totals, reasons=reasons,
                           median=median, top=top, peak=peak)


def record_first_response(openid):
    """Seconds from escalation to the first agent reply, once per handoff, for the statistics page."""
    state = svc().handoffs.get(openid)
    if state and not state.get("answered"):
        svc().redis.hset(keys.handoff(openid), "answered", "1")
        svc().redis.lpush(keys.FIRST_RESPONSE, round(time.time() - float(state.get("since", time.time())), 1))
        svc().redis.ltrim(keys.FIRST_RESPONSE, 0, 999)


def init_app(app, cfg):
    """Session security for the console: signed cookie, HttpOnly, SameSite, Secure behind HTTPS."""
    app.secret_key = cfg.console_secret or _persistent_secret(cfg)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=cfg.console_https, SESSION_COOKIE_NAME="wxkf_session",
                      PERMANENT_SESSION_LIFETIME=12 * 3600,
                      # The cookie is sent back only when the session changed. Refreshed on every
                      # request, a poll answered after a click put back the cookie the poll had
                      # carried, dropping the click's message. The login lasts 12 h from sign-in
                      # anyway: the server-side session id is not extended.
                      SESSION_REFRESH_EACH_REQUEST=False)
    app.jinja_env.filters.setdefault("datetime", lambda ts: time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)))
    from . import wording
    wording.install(app)
    app.register_blueprint(bp)
    from . import admin
    app.register_blueprint(admin.bp)


def _persistent_secret(cfg, name="console_secret"):
    """One random key shared by every web process of this installation, kept under var/ (0600)."""
    path = cfg.var_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under another name, then linked into place: a process starting at the same
        # moment sees either no file or the complete key, never an empty one; the first link wins.
        tmp = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
