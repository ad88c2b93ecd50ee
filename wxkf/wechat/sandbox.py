"""A local stand-in for WeChat's API servers, for the demo and the tests.

It behaves as the protocol reference says WeChat does (sections 2 and 4): access tokens expire and
`cgi-bin/token` supersedes the previous one after a 5-minute grace; `stable_token` returns the same
token while valid; custom/send enforces the 48-hour / 5-message window (45015, 45047), the 2048-byte
text limit (45002) and a daily quota (45009); typing needs an interaction in the last 30 s (45080) and
is refused while already typing (45081); errors carry WeChat's errcodes. It also plays WeChat's push
side: `/sandbox/push` builds a push exactly as WeChat would (signed, encrypted in safe mode) and
delivers it to the webhook, opening the shopper's window as WeChat does.

Control endpoints under /sandbox/ let tests and newcomers look inside: the messages received, the
token fetches, a clock that can be advanced, and failures injected for the next calls.
"""
import json
import secrets
import threading
import time

from flask import Flask, jsonify, request

from .. import defaults

SEND = "/cgi-bin/message/custom/send"
TYPING = "/cgi-bin/message/custom/typing"


class SandboxState:
    def __init__(self, appid, secret, token_lifetime=7200, daily_send_quota=500_000):
        self.appid, self.secret = appid, secret
        self.token_lifetime = token_lifetime
        self.daily_send_quota = daily_send_quota
        self.lock = threading.RLock()
        self.reset()

    def reset(self):
        with self.lock:
            self.offset = 0.0
            self.tokens = {}            # token -> expires_at (sandbox clock)
            self.stable = None          # the current stable token
            self.last_force = -1e9
            self.windows = {}           # openid -> {"allowance", "used", "expires"}
            self.typing_until = {}      # openid -> until
            self.last_interaction = {}  # openid -> time
            self.messages = []          # every accepted custom/send body
            self.typing = []            # every accepted typing body
            self.calls = []             # (path, errcode) of every API call
            self.token_fetches = []     # ("token"|"stable_token", force)
            self.failures = []          # [{"path", "errcode", "count"}]
            self.delays = {}            # path -> seconds
            self.sends_today = 0
            self.robot = []             # WeCom group-robot notifications
            self.login_codes = {}       # wx.login code -> {"openid", "used", "expires"}

    def now(self):
        return time.time() + self.offset

    # -- shopper side --------------------------------------------------------------------------
    def interact(self, openid, trigger="message", at=None):
        """What WeChat records when a shopper acts: the window opens to the larger of what is left
        and what the trigger grants (quota does not accumulate)."""
        if trigger == "message":
            allowance, seconds = defaults.USER_MSG_QUOTA, defaults.USER_MSG_WINDOW
        else:
            allowance, seconds = defaults.EVENT_QUOTA.get(trigger, (0, 0))
        with self.lock:
            now = self.now() if at is None else at
            w = self.windows.get(openid)
            left = w["allowance"] - w["used"] if w and w["expires"] > now else 0
            expires = max(w["expires"] if w else 0, now + seconds)
            self.windows[openid] = {"allowance": max(left, allowance), "used": 0, "expires": expires}
            self.last_interaction[openid] = now

    # -- tokens ---------------------------------------------------------------------------------
    def issue(self):
        token = "SANDBOX_" + secrets.token_urlsafe(24)
        self.tokens[token] = self.now() + self.token_lifetime
        return token

    def check_token(self, token):
        if not token:
            return 41001, "access_token missing"
        exp = self.tokens.get(token)
        if exp is None:
            return 40001, "invalid credential, access_token is invalid or not latest"
        if exp <= self.now():
            return 42001, "access_token expired"
        return 0, "ok"

    def revoke_all(self):
        with self.lock:
            self.tokens.clear()
            self.stable = None

    def take_failure(self, path):
        return take_failure(self.failures, path)


def take_failure(failures, path):
    """The errcode of the next failure injected for `path` (counted down), or None."""
    for f in failures:
        if f["path"] == path and f["count"] > 0:
            f["count"] -= 1
            return f["errcode"]
    return None


def create_sandbox(appid, secret, builder=None, webhook_url=None, wecom=None, **kwargs):
    """`wecom`: (corpid, kf_secret, KfCallbackBuilder or None) to serve WeCom 微信客服 as well."""
    app = Flask("wxkf.sandbox")
    app.json.ensure_ascii = False  # /sandbox/messages shows the replies as people read them
    state = SandboxState(appid, secret, **kwargs)
    state.builder, state.webhook_url = builder, webhook_url
    app.extensions["sandbox"] = state
    if wecom is not None:
        from ..wecom import sandbox as kf_sandbox
        corpid, kf_secret, kf_builder = wecom
        state.kf = kf_sandbox.KfWorld(corpid, kf_secret, state.now)

        def fire_callback(open_kfid):
            """Tell the webhook that messages wait, as WeCom does: an encrypted kf_msg_or_event."""
            import requests
            if kf_builder is None or not state.webhook_url:
                return None
            path, body = kf_builder.request(kf_builder.event(open_kfid, state.kf.new_callback_token()))
            try:
                return requests.post(state.webhook_url + path, data=body, timeout=5).status_code
            except requests.RequestException:
                return None  # WeCom would retry; the messages wait in sync_msg meanwhile

        state.fire_callback = fire_callback
        kf_sandbox.register(app, state.kf, fire_callback)

    def err(code, msg):
        with state.lock:
            state.calls.append((request.path, code))
        return jsonify(errcode=code, errmsg=msg)

    def body_json():
        raw = request.get_data()
        if not raw:
            return None, err(44002, "empty post data")
        try:
            data = json.loads(raw)
        except ValueError:
            return None, err(47001, "data format error")
        if not isinstance(data, dict):
            return None, err(47001, "data format error")
        return data, None

    def authed(path):
        delay = state.delays.get(path)
        if delay:
            time.sleep(delay)
        with state.lock:
            injected = state.take_failure(path)
            if injected is not None:
                return err(injected, "injected by the sandbox")
            code, msg = state.check_token(request.args.get("access_token"))
        if code:
            return err(code, msg)
        return None

    @app.get("/cgi-bin/token")
    def token():
        a = request.args
        if a.get("grant_type") != "client_credential":
            return err(40002, "invalid grant_type")
        if a.get("appid") != state.appid:
            return err(40013, "invalid appid")
        if a.get("secret") != state.secret:
            return err(40125, "invalid appsecret")
        with state.lock:
            # A new token supersedes the others, which stay valid for 5 more minutes.
            for t in state.tokens:
                state.tokens[t] = min(state.tokens[t], state.now() + 300)
            state.token_fetches.append(("token", False))
            tok = state.issue()
        return jsonify(access_token=tok, expires_in=state.token_lifetime)

    @app.post("/cgi-bin/stable_token")
    def stable_token():
        data, error = body_json()
        if error:
            return error
        if data.get("grant_type") != "client_credential":
            return err(40002, "invalid grant_type")
        if data.get("appid") != state.appid:
            return err(40013, "invalid appid")
        if data.get("secret") != state.secret:
            return err(40125, "invalid appsecret")
        force = bool(data.get("force_refresh"))
        with state.lock:
            injected = state.take_failure("/cgi-bin/stable_token")
            if injected is not None:
                return err(injected, "injected by the sandbox")
            now = state.now()
            if force and now - state.last_force < 30:
                return err(45009, "reach max api minute-quota limit (force_refresh ≥30 s apart)")
            state.token_fetches.append(("stable_token", force))
            current = state.stable
            if force or current is None or state.tokens.get(current, 0) <= now:
                if force:
                    state.last_force = now
                    if current:
                        state.tokens.pop(current, None)
                current = state.stable = state.issue()
            expires_in = int(state.tokens[current] - now)
        return jsonify(access_token=current, expires_in=expires_in)

    @app.post(SEND)
    def send():
        denied = authed(SEND)
        if denied:
            return denied
        data, error = body_json()
        if error:
            return error
        openid, msgtype = data.get("touser"), data.get("msgtype")
        if not openid or msgtype not in ("text", "image", "link", "miniprogrampage", "voice", "video",
                                          "music", "news", "mpnews", "msgmenu", "wxcard"):
            return err(40008, "invalid message type")
        content = data.get(msgtype)
        if not isinstance(content, dict):
            return err(47001, "data format error")
        if msgtype == "text" and len(str(content.get("content", "")).encode("utf-8")) > defaults.TEXT_LIMIT_BYTES:
            return err(45002, "content size out of limit")
        with state.lock:
            now = state.now()
            if state.sends_today >= state.daily_send_quota:
                return err(45009, "reach max api daily quota limit")
            w = state.windows.get(openid)
            if not w or w["expires"] <= now:
                return err(45015, "response out of time limit or subscription is canceled")
            if w["used"] >= w["allowance"]:
                return err(45047, "out of response count limit")
            w["used"] += 1
            state.sends_today += 1
            state.typing_until.pop(openid, None)  # sending cancels typing
            state.messages.append(dict(data, _at=now))
            state.calls.append((SEND, 0))
        return jsonify(errcode=0, errmsg="ok")

    @app.post(TYPING)
    def typing():
        denied = authed(TYPING)
        if denied:
            return denied
        data, error = body_json()
        if error:
            return error
        openid, command = data.get("touser"), data.get("command")
        if command not in ("Typing", "CancelTyping"):
            return err(45072, "command invalid")
        with state.lock:
            now = state.now()
            if now - state.last_interaction.get(openid, -1e9) > defaults.TYPING_WINDOW:
                return err(45080, "has not sent message to user in 30 seconds")
            if command == "Typing":
                if state.typing_until.get(openid, 0) > now:
                    return err(45081, "already in typing status")
                state.typing_until[openid] = now + 15
            else:
                state.typing_until.pop(openid, None)
            state.typing.append(dict(data, _at=now))
            state.calls.append((TYPING, 0))
        return jsonify(errcode=0, errmsg="ok")

    @app.post("/cgi-bin/media/upload")
    def upload():
        denied = authed("/cgi-bin/media/upload")
        if denied:
            return denied
        if request.args.get("type") != "image":
            return err(40004, "invalid media type")
        media = request.files.get("media")
        if media is None:
            return err(41005, "media data missing")
        if len(media.read()) > 10 * 1024 * 1024:
            return err(40006, "invalid meida size")
        return jsonify(type="image", media_id="MEDIA_" + secrets.token_hex(16), created_at=int(state.now()))

    @app.get("/sns/jscode2session")
    def jscode2session():
        """wx.login's code for an openid: single-use, 5 minutes (40029 unknown or expired, 40163 used)."""
        a = request.args
        if a.get("appid") != state.appid:
            return err(40013, "invalid appid")
        if a.get("secret") != state.secret:
            return err(40125, "invalid appsecret")
        if a.get("grant_type") != "authorization_code":
            return err(40002, "invalid grant_type")
        with state.lock:
            found = state.login_codes.get(a.get("js_code", ""))
            if found is None or found["expires"] <= state.now():
                return err(40029, "invalid code")
            if found["used"]:
                return err(40163, "code been used")
            found["used"] = True
            state.calls.append((request.path, 0))
        return jsonify(openid=found["openid"], session_key=secrets.token_urlsafe(16))

    @app.post("/sandbox/login")
    def sandbox_login():
        """Play wx.login on a shopper's phone: {"openid"} -> {"code"} for the page to send to wxkf."""
        data = request.get_json(force=True, silent=True) or {}
        code = "CODE_" + secrets.token_urlsafe(16)
        with state.lock:
            state.login_codes[code] = {"openid": data.get("openid", "o_sandbox_shopper"), "used": False,
                                       "expires": state.now() + 300}
        return jsonify(code=code)

    @app.post("/cgi-bin/webhook/send")
    def robot():
        """WeCom group robot (qyapi cgi-bin/webhook/send?key=...): records what would be posted to the group."""
        data, error = body_json()
        if error:
            return error
        if not request.args.get("key"):
            return err(93000, "invalid webhook url")
        if data.get("msgtype") not in ("text", "markdown"):
            return err(40008, "invalid message type")
        with state.lock:
            state.robot.append(data)
        return jsonify(errcode=0, errmsg="ok")

    # -- looking inside -------------------------------------------------------------------------
    @app.get("/sandbox/messages")
    def messages():
        touser = request.args.get("touser")
        with state.lock:
            rows = [m for m in state.messages if not touser or m["touser"] == touser]
        return jsonify(messages=rows, typing=len(state.typing), token_fetches=state.token_fetches)

    @app.post("/sandbox/control")
    def control():
        data = request.get_json(force=True, silent=True) or {}
        with state.lock:
            if data.get("reset"):
                state.reset()
                if getattr(state, "kf", None) is not None:
                    state.kf.reset()
            if "advance" in data:
                state.offset += float(data["advance"])
            if "token_lifetime" in data:
                state.token_lifetime = int(data["token_lifetime"])
            if "daily_send_quota" in data:
                state.daily_send_quota = int(data["daily_send_quota"])
            if data.get("revoke_tokens"):
                state.revoke_all()
            for f in data.get("fail", []):
                state.failures.append({"path": f["path"], "errcode": int(f["errcode"]),
                                       "count": int(f.get("count", 1))})
            for path, seconds in (data.get("delay") or {}).items():
                state.delays[path] = float(seconds)
            if "interact" in data:
                for openid in data["interact"]:
                    state.interact(openid)
        return jsonify(ok=True)

    @app.post("/sandbox/push")
    def push():
        """Play a shopper: {"openid", "text"} (or "event"), optional "mode" and "format"; the push is
        built and signed as WeChat does and delivered to the webhook."""
        import requests
        builder, webhook_url = state.builder, state.webhook_url
        if builder is None or not webhook_url:
            return jsonify(error="sandbox started without a webhook to push to"), 400
        data = request.get_json(force=True, silent=True) or {}
        openid = data.get("openid", "o_sandbox_shopper")
        event = data.get("event")
        state.interact(openid, "message" if not event else event)
        doc = builder.message(openid, text=data.get("text", ""), event=event,
                              msg_type=data.get("msgtype", "text"), fmt=data.get("format", "xml"))
        url, body = builder.request(doc, mode=data.get("mode", "safe"), fmt=data.get("format", "xml"))
        resp = requests.post(webhook_url + url, data=body, timeout=5)
        return jsonify(status=resp.status_code, body=resp.text)

    return app
