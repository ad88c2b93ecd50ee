"""WeCom 微信客服 endpoints for the local sandbox (protocol ref. 4 WeCom token, 5.3-5.6).

What it enforces, as the reference says WeCom does: `gettoken` per (CorpID, secret), tokens that
expire (42001) or are unknown (40014); `kf/sync_msg` with an opaque cursor, pages of `limit`
messages, `has_more`, no cursor = the last 3 days, messages sent through the API never returned,
`open_kfid` required (95000); `kf/send_msg` only while the session is 0 or 1 (95018; 95013 once
ended), within 48 hours of the customer's last message (95002) and 5 messages per customer message
(95001), text ≤ 2048 bytes, a first API send moves a new session to the smart assistant (0 → 1);
`send_msg_on_event` codes single-use with their lifetimes; `service_state/trans` only along the
documented transitions, a servicer who is receiving (95014); a callback's Token valid 10 minutes; a
session that ends by itself after 48 hours, with no event. Where the reference gives no errcode the
sandbox uses codes from WeCom's global table and says so: 95007 for an expired or unknown callback
Token, 95016 for a transition not allowed, 40029 for an invalid event code, 40058 for an invalid
parameter.

It also plays the customers and servicers: `KfWorld` methods (and `/sandbox/wecom/*`) add customer
messages, welcome events, a servicer taking, writing in or ending a session, and fire the encrypted
callback at the webhook as WeCom does.
"""
import re
import secrets
import threading
import time

from flask import jsonify, request

from .. import defaults
from ..wechat.sandbox import take_failure

THREE_DAYS = 3 * 86400
SESSION_SECONDS = 48 * 3600
ACCOUNT = "wkSandboxAccount000000000000001"
SERVICER = "zhangsan"


class KfWorld:
    def __init__(self, corpid, secret, clock):
        self.corpid, self.secret = corpid, secret
        self.clock = clock
        self.lock = threading.RLock()
        self.reset()

    def reset(self):
        with self.lock:
            self.token_lifetime = 7200
            self.tokens = {}          # token -> expires
            self.current = None
            self.token_fetches = 0
            self.accounts = {ACCOUNT: "沙盒客服"}
            self.servicers = {SERVICER: 0}   # userid -> status (0 接待中, 1 停止接待)
            self.log = []             # every message/event WeCom holds for sync_msg, in order
            self.cursors = {}         # cursor -> index in log after which reading resumes
            self.sessions = {}        # (kfid, uid) -> {"state", "servicer"}
            self.windows = {}         # (kfid, uid) -> {"allowance", "used", "expires"}
            self.sent = []            # accepted send_msg bodies
            self.msgids = {}          # (kfid, msgid) -> index in sent
            self.codes = {}           # code -> {"expires", "used", "kfid", "uid", "scene"}
            self.welcomed = {}        # (kfid, uid) -> last welcome time
            self.event_sends = []     # accepted send_msg_on_event bodies
            self.failures = []        # [{"path", "errcode", "count"}]
            self.delays = {}          # path -> seconds before answering
            self.calls = []           # (path, errcode)
            self.callbacks = {}       # callback Token -> when it was issued (valid 10 minutes)
            self.empty_pages = 0      # the next sync_msg answers this many empty pages with has_more = 1

    # -- the world's side: customers and servicers -------------------------------------------------
    def _append(self, item):
        with self.lock:
            item.setdefault("msgid", "msg" + secrets.token_hex(12))
            item.setdefault("send_time", int(self.clock()))
            self.log.append(item)
            return item["msgid"]

    def _session(self, kfid, uid):
        return self.sessions.setdefault((kfid, uid), {"state": 4, "servicer": ""})

    def customer_message(self, uid, text="", kfid=ACCOUNT, msgtype="text", body=None, at=None):
        """A customer writes: an ended session opens anew (4 -> 0) and the send window opens."""
        with self.lock:
            now = self.clock() if at is None else at
            s = self._session(kfid, uid)
            if s["state"] != 4 and now - s.get("since", now) > SESSION_SECONDS:
                s.update(state=4, servicer="")  # a session lasts until ended or 48 h (no event)
            if s["state"] == 4:
                s.update(state=0, servicer="", since=now)
            self.windows[(kfid, uid)] = {"allowance": defaults.USER_MSG_QUOTA, "used": 0,
                                         "expires": now + defaults.USER_MSG_WINDOW}
            item = {"open_kfid": kfid, "external_userid": uid, "send_time": int(now), "origin": 3,
                    "msgtype": msgtype}
            if s["state"] == 3:
                item["servicer_userid"] = s["servicer"]
            item[msgtype] = body if body is not None else {"content": text}
            return self._append(item)

    def enter_session(self, uid, kfid=ACCOUNT, scene="mini", scene_param=""):
        """The customer opens the chat: a welcome code unless welcomed in the last 48 h or they wrote."""
        with self.lock:
            now = self.clock()
            ev = {"event_type": "enter_session", "open_kfid": kfid, "external_userid": uid, "scene": scene,
                  "scene_param": scene_param}
            wrote = any(i.get("external_userid") == uid and i.get("origin") == 3
                        and now - i["send_time"] < 48 * 3600 for i in self.log)
            if not wrote and now - self.welcomed.get((kfid, uid), -1e12) > 48 * 3600:
                code = "WELCOME_" + secrets.token_hex(8)
                self.codes[code] = {"expires": now + 20, "used": False, "kfid": kfid, "uid": uid, "scene": "welcome"}
                ev["welcome_code"] = code
            return self._append({"origin": 4, "msgtype": "event", "event": ev})

    def servicer_take(self, uid, servicer=SERVICER, kfid=ACCOUNT):
        """A servicer takes the session in the WeCom client: from the pool (change_type 1) or an ended
        session re-opened (4)."""
        with self.lock:
            s = self._session(kfid, uid)
            change = {4: 4, 2: 1}.get(s["state"], 2)  # re-opened, taken from the pool, else transferred
            old = s["servicer"]
            s.update(state=3, servicer=servicer)
            ev = {"event_type": "session_status_change", "open_kfid": kfid, "external_userid": uid,
                  "change_type": change, "old_servicer_userid": old, "new_servicer_userid": servicer,
                  "msg_code": "TAKEN_" + secrets.token_hex(6)}
            return self._append({"origin": 4, "msgtype": "event", "event": ev})

    def servicer_message(self, uid, text, servicer=SERVICER, kfid=ACCOUNT):
        with self.lock:
            return self._append({"open_kfid": kfid, "external_userid": uid, "origin": 5, "servicer_userid": servicer,
                                 "msgtype": "text", "text": {"content": text}})

    def servicer_end(self, uid, kfid=ACCOUNT):
        with self.lock:
            s = self._session(kfid, uid)
            old = s["servicer"]
            s.update(state=4, servicer="")
            ev = {"event_type": "session_status_change", "open_kfid": kfid, "external_userid": uid, "change_type": 3,
                  "old_servicer_userid": old, "msg_code": "END_" + secrets.token_hex(6)}
            return self._append({"origin": 4, "msgtype": "event", "event": ev})

    def new_callback_token(self):
        token = "ENC" + secrets.token_urlsafe(33)
        with self.lock:
            self.callbacks[token] = self.clock()
        return token

    def sent_to(self, uid=None):
        with self.lock:
            return [m for m in self.sent if uid is None or m["touser"] == uid]

    # -- tokens -----------------------------------------------------------------------------------
    def check_token(self, token):
        if not token:
            return 41001, "access_token missing"
        exp = self.tokens.get(token)
        if exp is None:
            return 40014, "invalid access_token"
        if exp <= self.clock():
            return 42001, "access_token expired"
        return 0, "ok"

    def take_failure(self, path):
        return take_failure(self.failures, path)


def register(app, world, fire_callback):
    """Add WeCom's endpoints to the sandbox app. `fire_callback(open_kfid)` posts a callback."""

    def err(code, msg):
        with world.lock:
            world.calls.append((request.path, code))
        return jsonify(errcode=code, errmsg=msg)

    def authed():
        delay = world.delays.get(request.path)
        if delay:
            time.sleep(delay)
        with world.lock:
            injected = world.take_failure(request.path)
            if injected is not None:
                if injected >= 500 and injected < 600:
                    return ("server error", injected)
                return err(injected, "injected by the sandbox")
            code, msg = world.check_token(request.args.get("access_token"))
        return err(code, msg) if code else None

    def body():
        data = request.get_json(force=True, silent=True)
        return data if isinstance(data, dict) else None

    @app.get("/cgi-bin/gettoken")
    def gettoken():
        a = request.args
        if a.get("corpid") != world.corpid:
            return err(40013, "invalid corpid")
        if a.get("corpsecret") != world.secret:
            return err(40001, "invalid credential (corpsecret)")
        with world.lock:
            now = world.clock()
            world.token_fetches += 1
            # WeCom returns the same token while it is valid.
            if world.current is None or world.tokens.get(world.current, 0) <= now:
                world.current = "WECOM_" + secrets.token_urlsafe(24)
                world.tokens[world.current] = now + world.token_lifetime
            return jsonify(errcode=0, errmsg="ok", access_token=world.current,
                           expires_in=int(world.tokens[world.current] - now))

    @app.post("/cgi-bin/kf/sync_msg")
    def sync_msg():
        denied = authed()
        if denied:
            return denied
        data = body()
        if data is None:
            return err(47001, "data format error")
        kfid = data.get("open_kfid")
        if kfid not in world.accounts:
            return err(95000, "invalid open_kfid")
        token = data.get("token")
        if token is not None and (token not in world.callbacks or world.clock() - world.callbacks[token] > 600):
            # A Token comes from a callback and lives 10 minutes (protocol ref. 5.3); the errcode is
            # WeCom's "invalid msg token" from its global table (the reference names none).
            return err(95007, "invalid msg token")
        limit = int(data.get("limit") or 1000)
        if not 1 <= limit <= 1000:
            return err(40058, "limit must be 1-1000")
        with world.lock:
            cursor = data.get("cursor")
            if cursor:
                if cursor not in world.cursors:
                    return err(40058, "invalid cursor")
                start = world.cursors[cursor]
            else:  # no cursor: the oldest message of the last 3 days
                horizon = world.clock() - THREE_DAYS
                start = next((i for i, m in enumerate(world.log) if m["send_time"] >= horizon), len(world.log))
            if world.empty_pages > 0:  # "msg_list may be empty while has_more is 1" (protocol ref. 5.3)
                world.empty_pages -= 1
                nxt = "C" + secrets.token_hex(10)
                world.cursors[nxt] = start
                world.calls.append((request.path, 0))
                return jsonify(errcode=0, errmsg="ok", next_cursor=nxt, has_more=1, msg_list=[])
            mine = [i for i in range(start, len(world.log)) if _account_of(world.log[i]) == kfid]
            page = mine[:limit]
            end = page[-1] + 1 if page else len(world.log)
            nxt = "C" + secrets.token_hex(10)
            world.cursors[nxt] = end
            world.calls.append((request.path, 0))
            return jsonify(errcode=0, errmsg="ok", next_cursor=nxt, has_more=1 if len(mine) > limit else 0,
                           msg_list=[dict(world.log[i]) for i in page])

    @app.post("/cgi-bin/kf/send_msg")
    def send_msg():
        denied = authed()
        if denied:
            return denied
        data = body()
        if data is None:
            return err(47001, "data format error")
        kfid, uid, msgid, msgtype = data.get("open_kfid"), data.get("touser"), data.get("msgid"), data.get("msgtype")
        if kfid not in world.accounts:
            return err(95000, "invalid open_kfid")
        if not uid:
            return err(40003, "invalid external_userid")
        if msgid is not None and not re.fullmatch(r"[0-9A-Za-z_-]{1,32}", str(msgid)):
            return err(40058, "invalid msgid")
        content = data.get(msgtype)
        if msgtype not in ("text", "image", "voice", "video", "file", "link", "miniprogram", "msgmenu", "location") \
                or not isinstance(content, dict):
            return err(40008, "invalid message type")
        if msgtype == "text" and len(str(content.get("content", "")).encode("utf-8")) > defaults.TEXT_LIMIT_BYTES:
            return err(45002, "content size out of limit")
        with world.lock:
            if msgid and (kfid, msgid) in world.msgids:
                # The reference calls msgid the idempotency key: the same msgid is the same message.
                world.calls.append((request.path, 0))
                return jsonify(errcode=0, errmsg="ok", msgid=msgid)
            s = world._session(kfid, uid)
            if s["state"] == 4:
                return err(95013, "session already ended")
            if s["state"] not in (0, 1):
                return err(95018, "send msg session status invalid")
            w = world.windows.get((kfid, uid))
            if not w or w["expires"] <= world.clock():
                return err(95002, "send msg time limit")
            if w["used"] >= w["allowance"]:
                return err(95001, "send msg count limit")
            w["used"] += 1
            s["state"] = 1  # an API send gives a new session to the smart assistant
            msgid = msgid or "srv" + secrets.token_hex(10)
            world.sent.append(dict(data, msgid=msgid, _at=world.clock()))
            world.msgids[(kfid, msgid)] = len(world.sent) - 1
            world.calls.append((request.path, 0))
            return jsonify(errcode=0, errmsg="ok", msgid=msgid)

    @app.post("/cgi-bin/kf/send_msg_on_event")
    def send_msg_on_event():
        denied = authed()
        if denied:
            return denied
        data = body()
        if data is None:
            return err(47001, "data format error")
        with world.lock:
            code = world.codes.get(data.get("code"))
            if code is None or code["used"] or code["expires"] <= world.clock():
                return err(40029, "invalid code")
            if data.get("msgtype") not in ("text", "msgmenu") or not isinstance(data.get(data.get("msgtype")), dict):
                return err(40008, "invalid message type")
            code["used"] = True
            if code["scene"] == "welcome":
                world.welcomed[(code["kfid"], code["uid"])] = world.clock()
            world.event_sends.append(dict(data, touser=code["uid"], open_kfid=code["kfid"]))
            world.calls.append((request.path, 0))
            return jsonify(errcode=0, errmsg="ok", msgid=data.get("msgid") or "evt" + secrets.token_hex(8))

    @app.post("/cgi-bin/kf/service_state/get")
    def state_get():
        denied = authed()
        if denied:
            return denied
        data = body() or {}
        if data.get("open_kfid") not in world.accounts:
            return err(95000, "invalid open_kfid")
        with world.lock:
            s = world._session(data["open_kfid"], data.get("external_userid"))
            world.calls.append((request.path, 0))
            out = {"errcode": 0, "errmsg": "ok", "service_state": s["state"]}
            if s["state"] == 3:  # the servicer only when a servicer has it (protocol ref. 5.6)
                out["servicer_userid"] = s["servicer"]
            return jsonify(out)

    allowed = {0: {1, 2, 3}, 1: {2, 3}, 2: {3}, 3: {3, 4}, 4: set()}

    @app.post("/cgi-bin/kf/service_state/trans")
    def state_trans():
        denied = authed()
        if denied:
            return denied
        data = body() or {}
        kfid, uid = data.get("open_kfid"), data.get("external_userid")
        if kfid not in world.accounts:
            return err(95000, "invalid open_kfid")
        try:
            target = int(data.get("service_state"))
        except (TypeError, ValueError):
            return err(40058, "invalid service_state")
        with world.lock:
            s = world._session(kfid, uid)
            if target not in allowed[s["state"]]:
                return err(95016, "service state transition not allowed")
            servicer = data.get("servicer_userid", "")
            if target == 3 and world.servicers.get(servicer) != 0:
                return err(95014, "servicer not receiving or not activated")
            first = target in (2, 3) and s["state"] in (0, 1)
            s.update(state=target, servicer=servicer if target == 3 else "")
            world.calls.append((request.path, 0))
            out = {"errcode": 0, "errmsg": "ok"}
            if first or target == 4:
                code = "CODE_" + secrets.token_hex(8)
                world.codes[code] = {"expires": world.clock() + (48 * 3600 if first else 20), "used": False,
                                     "kfid": kfid, "uid": uid, "scene": "pool" if first else "end"}
                out["msg_code"] = code
            return jsonify(out)

    @app.route("/cgi-bin/kf/account/list", methods=["GET", "POST"])
    def account_list():
        denied = authed()
        if denied:
            return denied
        with world.lock:
            return jsonify(errcode=0, errmsg="ok", account_list=[
                {"open_kfid": k, "name": v, "avatar": ""} for k, v in world.accounts.items()])

    # -- playing the customers and servicers ----------------------------------------------------
    @app.post("/sandbox/wecom/customer")
    def play_customer():
        """{"external_userid", "text"} or {"event": "enter_session"}; optional "open_kfid", "callback"."""
        data = request.get_json(force=True, silent=True) or {}
        uid = data.get("external_userid", "wmSandboxCustomer01")
        kfid = data.get("open_kfid", ACCOUNT)
        if data.get("event") == "enter_session":
            world.enter_session(uid, kfid)
        else:
            world.customer_message(uid, data.get("text", ""), kfid)
        status = fire_callback(kfid) if data.get("callback", True) else None
        return jsonify(ok=True, callback_status=status)

    @app.post("/sandbox/wecom/servicer")
    def play_servicer():
        """{"action": "take"|"say"|"end", "external_userid", "text", "servicer"}."""
        data = request.get_json(force=True, silent=True) or {}
        uid, kfid = data.get("external_userid", "wmSandboxCustomer01"), data.get("open_kfid", ACCOUNT)
        action = data.get("action")
        if action == "take":
            world.servicer_take(uid, data.get("servicer", SERVICER), kfid)
        elif action == "say":
            world.servicer_message(uid, data.get("text", ""), data.get("servicer", SERVICER), kfid)
        elif action == "end":
            world.servicer_end(uid, kfid)
        else:
            return jsonify(error="action: take, say or end"), 400
        return jsonify(ok=True, callback_status=fire_callback(kfid))

    @app.get("/sandbox/wecom/messages")
    def kf_messages():
        uid = request.args.get("touser")
        with world.lock:
            return jsonify(messages=world.sent_to(uid), welcomes=list(world.event_sends),
                           sessions={f"{k[0]}/{k[1]}": v for k, v in world.sessions.items()})

    @app.post("/sandbox/wecom/control")
    def kf_control():
        data = request.get_json(force=True, silent=True) or {}
        with world.lock:
            if data.get("reset"):
                world.reset()
            for f in data.get("fail", []):
                world.failures.append({"path": f["path"], "errcode": int(f["errcode"]), "count": int(f.get("count", 1))})
            if "token_lifetime" in data:
                world.token_lifetime = int(data["token_lifetime"])
            for path, seconds in (data.get("delay") or {}).items():
                world.delays[path] = float(seconds)
        return jsonify(ok=True)


def _account_of(item):
    if item.get("msgtype") == "event":
        return (item.get("event") or {}).get("open_kfid")
    return item.get("open_kfid")

