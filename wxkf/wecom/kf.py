"""WeCom 微信客服: pulling messages, sending, and who holds a session (protocol ref. 5).

A WeCom callback carries no message, only "pull now" with a Token and the account (`open_kfid`).
The webhook records that wake-up (`KfChannel.wake`) and returns; a worker then pulls:

- One puller per account at a time, across processes (a Redis lock renewed page by page).
- `kf/sync_msg` from the saved cursor, page after page while `has_more`, the cursor saved after
  each page *after* the page's messages are queued. A pull that fails halfway, or a worker that dies,
  leaves the cursor at the last page fully queued: the next pull reads the rest, and what is read
  twice is dropped by the inbox's dedup on `msgid`.
- The wake-up is cleared only by a pull that saw the latest callback's Token through to the end, in
  one atomic step with releasing the lock. A callback that arrives during a pull makes the puller go
  round again; one that arrives after it finished starts a new pull. None is lost.
- First start (no cursor): the history is read to take the cursor; messages older than
  `HISTORY_GRACE` seconds are not answered.

Messages become the same inbound records as Mini Program pushes (`channel = "wecom"`, the customer's
`external_userid` as the conversation id) and go through the same inbox, engine and console. The
session state decides whether the bot may speak: only in 0 (new) or 1 (smart assistant); escalation
moves the session to WeCom's waiting pool or a named servicer (`service_state/trans`), and the bot
stays silent until WeCom reports the session ended.
"""
import hashlib
import logging
import re
import time

import redis as redis_lib

from .. import defaults, keys
from ..errors import SessionNotOurs, WeChatApiError, WeChatError, WeChatTimeout
from ..store import DELETE_IF_EQUAL, RENEW_IF_OWNER
from ..wechat.sender import Sender
from .api import WeComAPI

log = logging.getLogger("wxkf.wecom")

SYNC = "/cgi-bin/kf/sync_msg"
SEND = "/cgi-bin/kf/send_msg"
SEND_ON_EVENT = "/cgi-bin/kf/send_msg_on_event"
STATE_GET = "/cgi-bin/kf/service_state/get"
STATE_TRANS = "/cgi-bin/kf/service_state/trans"

HISTORY_GRACE = 120
"""Seconds: on first start, messages sent this long before the first pull are still answered (the one
that triggered the first callback among them); older history only moves the cursor."""

PULL_LOCK_MS = 30_000
"""A puller's lock lives this long without a page; a dead puller's account is pulled again after it."""

MAX_BACKOFF = 60
"""Seconds, at most, between retries of an account whose pulls keep failing."""

PAGE_LIMIT = 1000
"""Messages per sync_msg page (WeCom's maximum)."""

MAX_PAGES = 50
"""Pages one pull reads before giving the worker back to the inbox; the next round carries on."""

STATE_RECHECK = 600
"""Seconds after which a "human holds it" state is confirmed with WeCom before the bot stays silent."""

TOKEN_FRESH = 540
"""Seconds a callback's Token is sent with sync_msg: WeCom keeps it valid 10 minutes (protocol ref. 5.3);
an older one is left out (the pull is then rate-limited by WeCom, but works)."""

BOT_STATES = ("0", "1")
"""Session states in which the API (the bot) may send: 0 new, 1 smart assistant."""

MESSAGE_TYPES = {"text": "text", "image": "image", "voice": "voice", "video": "video", "file": "file",
                 "location": "location", "link": "link", "miniprogram": "miniprogrampage",
                 "business_card": "business_card", "channels_shop_product": "link", "channels_shop_order": "link"}
"""sync_msg msgtype -> the inbound type the engine knows (protocol ref. 5.3)."""

EVENTS = {"enter_session", "msg_send_fail", "session_status_change", "user_recall_msg", "servicer_recall_msg"}
"""Per-customer events queued for the worker. servicer_status_change (not about a customer) and
reject_customer_msg_switch_change are logged by the puller and go no further."""

ORIGIN_CUSTOMER, ORIGIN_EVENT, ORIGIN_SERVICER = 3, 4, 5

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Finish a pull: when the account's latest wake-up is the one this pull started from (or there is
# none), clear it and release the lock together; else a callback came meanwhile: keep going (0).
_FINISH = """
local t = redis.call('HGET', KEYS[1], ARGV[1])
if t and t ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""

# Record a wake-up as "time:token"; a retried callback (same Token) leaves it as it is. The first
# wake-up of an account without a cursor is kept apart, to tell history from new messages.
_WAKE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not (v and string.sub(v, (string.find(v, ':', 1, true) or 0) + 1) == ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ':' .. ARGV[2])
end
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3])
return 1
"""



def msgid_for(key):
    """Our `msgid` for a send: ≤32 bytes of [0-9a-zA-Z_-], the same for the same reply part, so WeCom
    can tell a resend from a new message (protocol ref. 5.4)."""
    return hashlib.sha1(key.encode()).hexdigest()[:32]


def _safe_id(value):
    value = str(value or "")
    return value if _ID.fullmatch(value) else ""


def _number(value, default):
    """A non-negative integer field from WeCom: ASCII digits only ('³'.isdigit() is true), else default."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value if value >= 0 else default
    return int(value) if isinstance(value, str) and re.fullmatch(r"[0-9]{1,12}", value) else default


def to_inbound(item):
    """One sync_msg item -> the inbound record the worker consumes, or None for what is not acted on.

    Ids from WeCom become Redis keys and log fields: anything not shaped like one is refused."""
    if not isinstance(item, dict):
        return None
    msgtype = str(item.get("msgtype", ""))
    origin = _number(item.get("origin"), 0)
    raw_id = str(item.get("msgid") or "")
    if not raw_id or len(raw_id) > 128 or origin not in (ORIGIN_CUSTOMER, ORIGIN_EVENT, ORIGIN_SERVICER):
        return None
    push_id = "wk_" + (raw_id if re.fullmatch(r"[A-Za-z0-9_-]{1,100}", raw_id) else hashlib.sha1(raw_id.encode()).hexdigest())
    send_time = _number(item.get("send_time"), int(time.time()))
    fields = {}
    if msgtype == "event":
        ev = item.get("event") if isinstance(item.get("event"), dict) else {}
        event = str(ev.get("event_type", ""))
        if event not in EVENTS:
            return None
        uid, kfid = _safe_id(ev.get("external_userid")), _safe_id(ev.get("open_kfid"))
        for k in ("welcome_code", "scene", "scene_param", "fail_msgid", "fail_type", "servicer_userid", "status",
                  "change_type", "old_servicer_userid", "new_servicer_userid", "msg_code", "recall_msgid"):
            if ev.get(k) not in (None, ""):
                fields[k] = str(ev[k])[:256]
        kind = "event"
    else:
        kind = MESSAGE_TYPES.get(msgtype)
        if kind is None:
            return None
        event = ""
        uid, kfid = _safe_id(item.get("external_userid")), _safe_id(item.get("open_kfid"))
        body = item.get(msgtype) if isinstance(item.get(msgtype), dict) else {}
        if msgtype == "text":
            fields["Content"] = str(body.get("content", ""))
            if body.get("menu_id"):
                fields["menu_id"] = str(body["menu_id"])[:64]
        elif msgtype in ("image", "voice", "video", "file"):
            fields["MediaId"] = str(body.get("media_id", ""))[:256]
        elif msgtype == "location":
            fields.update(Location_X=str(body.get("latitude", "")), Location_Y=str(body.get("longitude", "")),
                          Label=str(body.get("address") or body.get("name") or ""))
        elif msgtype == "link" or msgtype.startswith("channels_shop"):
            fields.update(Title=str(body.get("title", "")), Description=str(body.get("desc", "")),
                          Url=str(body.get("url", "")))
        elif msgtype == "miniprogram":
            fields.update(Title=str(body.get("title", "")), AppId=str(body.get("appid", "")),
                          PagePath=str(body.get("pagepath", "")))
        if origin == ORIGIN_SERVICER:
            fields["servicer_userid"] = _safe_id(item.get("servicer_userid"))
    if not uid or not kfid:
        return None
    return {"id": push_id, "format": "wecom", "channel": "wecom", "openid": uid, "to": kfid,
            "create_time": send_time, "type": kind, "event": event, "origin": origin, "fields": fields}


class KfSender(Sender):
    """The Sender over `kf/send_msg`: the same window (48 h / 5 messages per customer message),
    splitting, idempotency record and undelivered stream; WeCom has no typing indicator."""

    SEND_PATH = SEND
    API_NAME = "kf_send_msg"
    RESEND_INTERRUPTED = True  # the same msgid is the same message to WeCom (protocol ref. 5.4)

    def __init__(self, redis, api, metrics, **kwargs):
        super().__init__(redis, api, metrics, typing=False, **kwargs)

    def retryable(self, exc):
        # The same msgid is the same message to WeCom (protocol ref. 5.4): after a timeout, sending
        # again cannot give the customer a second copy.
        return exc.retryable or isinstance(exc, WeChatTimeout)

    def message(self, openid, text, key):
        open_kfid = self.redis.hget(keys.kf_user(openid), "open_kfid")
        if not open_kfid:
            raise WeChatApiError(95000, "no 微信客服 account known for this customer (route expired)", SEND)
        return {"touser": openid, "open_kfid": open_kfid, "msgid": msgid_for(key), "msgtype": "text",
                "text": {"content": text}}


class KfChannel:
    """The WeCom 微信客服 channel of one corp: built once per process when its credentials are set."""

    def __init__(self, redis, cfg, inbox, metrics, handoffs, clock=time.time, history_grace=HISTORY_GRACE):
        self.redis = redis
        self.cfg = cfg
        self.inbox = inbox
        self.metrics = metrics
        self.handoffs = handoffs
        self.clock = clock
        self.history_grace = history_grace
        self.page_limit = PAGE_LIMIT
        self.lock_ms = PULL_LOCK_MS
        self.api = WeComAPI(redis, cfg.wecom_api_base, cfg.corpid, cfg.kf_secret, metrics=metrics)
        self.sender = KfSender(redis, self.api, metrics, replicas=cfg.redis_replicas)
        self._finish = redis.register_script(_FINISH)
        self._renew = redis.register_script(RENEW_IF_OWNER)
        self._release = redis.register_script(DELETE_IF_EQUAL)
        self._wake = redis.register_script(_WAKE)

    # -- the webhook's side ---------------------------------------------------------------------
    def wake(self, open_kfid, token):
        """A callback said messages wait for `open_kfid`: remember its Token, and when it came, for the
        pull. A retried callback brings the same Token: the wake-up it records is the same."""
        self._wake(keys=[keys.KF_WAKE, keys.KF_FIRST_WAKE], args=[open_kfid, token, int(self.clock())])

    # -- pulling (the worker's side) ----------------------------------------------------------------
    def pull_due(self, owner):
        """Pull every account a callback woke and no failure holds back. Returns messages queued."""
        wakes = self.redis.hgetall(keys.KF_WAKE)
        if not wakes:
            return 0
        retry = self.redis.hgetall(keys.KF_RETRY)
        now = self.clock()
        queued = 0
        for open_kfid in wakes:
            if float((retry.get(open_kfid) or "0:0").split(":")[0]) > now:
                continue
            queued += self.pull(open_kfid, owner)
        return queued

    def pull(self, open_kfid, owner):
        """Pull one account's new messages into the inbox, unless another process is pulling it.
        Returns the number of messages queued; a WeChatError is logged and retried later."""
        lock = keys.kf_pull_lock(open_kfid)
        if not self.redis.set(lock, owner, nx=True, px=self.lock_ms):
            return 0  # another process pulls it; it goes round again if our wake-up came in meanwhile
        progress = {"queued": 0}
        try:
            while True:
                wake = self.redis.hget(keys.KF_WAKE, open_kfid)
                if not self._pull_pages(open_kfid, self._fresh_token(wake), lock, owner, progress):
                    self._release(keys=[lock], args=[owner])  # page budget used: next round goes on
                    return progress["queued"]
                if self._finish(keys=[keys.KF_WAKE, lock, keys.KF_RETRY], args=[open_kfid, wake or "", owner]):
                    self.metrics.inc("wxkf_kf_pulls_total", outcome="ok")
                    return progress["queued"]
        except _LockLost:
            log.warning("pull of %s took longer than its lock; another process carries on", open_kfid)
            return progress["queued"]
        except redis_lib.RedisError:
            self._release(keys=[lock], args=[owner])  # the wake-up stays: another round pulls again
            raise
        except Exception as exc:  # WeChatError, or anything WeCom sent that we could not read
            self._failed(open_kfid, exc)
            self._release(keys=[lock], args=[owner])
            return progress["queued"]
        except BaseException:
            self._release(keys=[lock], args=[owner])
            raise

    def _fresh_token(self, wake):
        """The wake-up's Token while WeCom still honours it; None when it is too old (protocol ref.
        5.3: valid 10 minutes, optional)."""
        if not wake or ":" not in wake:
            return None
        at, token = wake.split(":", 1)
        return token if at.isascii() and at.isdigit() and self.clock() - int(at) < TOKEN_FRESH else None

    def _sync(self, body):
        """One sync_msg call, checked: a page WeCom could not have sent is an error (retried with
        backoff), never a crash of the worker or a loop."""
        data = self.api.call(SYNC, body)
        items, nxt, more = data.get("msg_list", []), data.get("next_cursor", ""), data.get("has_more", 0)
        if not isinstance(items, list) or not isinstance(nxt, str) or len(nxt.encode()) > 64 \
                or more not in (0, 1, "0", "1"):
            raise WeChatApiError(-1, "sync_msg answer not as documented (msg_list, next_cursor, has_more)", SYNC)
        return items, nxt, str(more) == "1"

    def _pull_pages(self, open_kfid, token, lock, owner, progress):
        """Read pages until has_more is 0 (True) or the page budget is used (False)."""
        cursor_key = keys.kf_cursor(open_kfid)
        cursor = self.redis.get(cursor_key)
        # First start: what came well before the first callback is history. The cut-off is kept until
        # a pull reaches the end, so a first pull interrupted after some pages answers no history later.
        kept = self.redis.hget(keys.KF_HORIZON, open_kfid)
        horizon = float(kept) if kept else None
        if cursor is None and horizon is None:
            first = self.redis.hget(keys.KF_FIRST_WAKE, open_kfid)
            horizon = (int(first) if first and first.isdigit() else self.clock()) - self.history_grace
            self.redis.hset(keys.KF_HORIZON, open_kfid, horizon)
        queued = skipped = 0
        done = False
        for _ in range(MAX_PAGES):
            body = {"open_kfid": open_kfid, "limit": self.page_limit, "voice_format": 0}
            if cursor:
                body["cursor"] = cursor
            if token:
                body["token"] = token
            try:
                items, nxt, more = self._sync(body)
            except WeChatApiError as exc:
                if not token or exc.errcode in (-1, 40014, 42001):
                    raise
                # The Token expired (10 minutes) or was refused: pull without it (rate-limited by WeCom).
                log.warning("sync_msg refused the callback's Token (errcode %s); pulling without it", exc.errcode)
                token = None
                continue
            for item in items:
                try:
                    inbound = to_inbound(item)
                except (TypeError, ValueError, AttributeError) as exc:  # never a reason to stop the worker
                    inbound = None
                    log.warning("sync_msg item malformed (%s), skipped", type(exc).__name__)
                if inbound is None:
                    self._not_queued(item)
                    continue
                if horizon is not None and inbound["create_time"] < horizon:
                    skipped += 1  # first start: history before wxkf ran is not answered
                    continue
                self.inbox.enqueue(inbound)
                queued += 1
                progress["queued"] += 1
            if nxt:
                pipe = self.redis.pipeline()
                pipe.set(cursor_key, nxt)  # after the page's messages are queued
                pipe.hdel(keys.KF_FIRST_WAKE, open_kfid)
                pipe.execute()
            if not self._renew(keys=[lock], args=[owner, self.lock_ms]):
                raise _LockLost()
            if not more:
                done = True
                if horizon is not None:
                    self.redis.hdel(keys.KF_HORIZON, open_kfid)  # caught up: everything after is new
                break
            if not nxt or nxt == cursor:
                raise WeChatApiError(-1, "has_more without a new cursor", SYNC)  # retried later, never spun
            cursor = nxt
        if skipped:
            log.warning("first pull of %s: %d messages from before the first callback taken as history, "
                        "not answered", open_kfid, skipped)
        if queued:
            self.metrics.inc("wxkf_kf_messages_total", queued)
        log.info("pulled %s: %d queued%s", open_kfid, queued, "" if done else ", more next round")
        return done

    def _not_queued(self, item):
        if isinstance(item, dict) and item.get("msgtype") == "event":
            ev = item.get("event") if isinstance(item.get("event"), dict) else {}
            if ev.get("event_type") == "servicer_status_change":
                log.info("servicer %s status %s", _safe_id(ev.get("servicer_userid")), str(ev.get("status", ""))[:4])
                return
        log.info("sync_msg item not acted on: msgtype=%r", str(item.get("msgtype", ""))[:32] if isinstance(item, dict) else "?")

    def _failed(self, open_kfid, exc):
        raw = self.redis.hget(keys.KF_RETRY, open_kfid) or "0:0"
        failures = int(raw.split(":")[1]) + 1
        delay = min(MAX_BACKOFF, 2 ** (failures - 1))
        self.redis.hset(keys.KF_RETRY, open_kfid, f"{self.clock() + delay}:{failures}")
        self.metrics.inc("wxkf_kf_pulls_total", outcome="failed")
        log.error("pull of %s failed (%s); retry in %ss, nothing is lost (the cursor stays at the last page)",
                  open_kfid, exc, delay)

    # -- sessions ---------------------------------------------------------------------------------
    # WeCom keeps a session per (account, customer): the state of each is a field of the customer's
    # hash (`state:<open_kfid>`), and `open_kfid` is the account the customer wrote to last, through
    # which replies go.
    def remember(self, inbound):
        """The account a customer talks to (replies go through it) and, for a customer message, the
        state WeCom gives an ended session when the customer writes again (4 -> 0)."""
        key, kfid = keys.kf_user(inbound["openid"]), inbound["to"]
        pipe = self.redis.pipeline()
        pipe.hset(key, "open_kfid", kfid)
        if inbound["origin"] == ORIGIN_CUSTOMER and inbound["type"] != "event":
            pipe.eval("if redis.call('HGET', KEYS[1], ARGV[1]) == '4' then redis.call('HSET', KEYS[1], ARGV[1], '0') end",
                      1, key, f"state:{kfid}")
        pipe.expire(key, defaults.IDEMPOTENCY_TTL)
        pipe.execute()

    def account_of(self, uid):
        return self.redis.hget(keys.kf_user(uid), "open_kfid")

    def state(self, uid, kfid=None):
        """The session state last known ('0'..'4'), '' when unknown (treated as new)."""
        kfid = kfid or self.account_of(uid)
        return self.redis.hget(keys.kf_user(uid), f"state:{kfid}") or ""

    def set_state(self, uid, state, servicer="", kfid=None):
        kfid = kfid or self.account_of(uid)
        self.redis.hset(keys.kf_user(uid), mapping={f"state:{kfid}": str(state), f"servicer:{kfid}": servicer or "",
                                                    f"at:{kfid}": round(self.clock(), 3)})

    def answered(self, uid, kfid=None):
        """The bot sent in this session: WeCom assigns a new (0) session to the smart assistant (1)."""
        self.redis.eval("local s = redis.call('HGET', KEYS[1], ARGV[1]) "
                        "if not s or s == '' or s == '0' then redis.call('HSET', KEYS[1], ARGV[1], '1') end",
                        1, keys.kf_user(uid), f"state:{kfid or self.account_of(uid)}")

    def is_wecom(self, uid):
        return bool(self.redis.hexists(keys.kf_user(uid), "open_kfid"))

    def refresh_state(self, uid, kfid=None):
        """Ask WeCom who holds the session (service_state/get) and remember it."""
        kfid = kfid or self.account_of(uid)
        data = self.api.call(STATE_GET, {"open_kfid": kfid, "external_userid": uid})
        state = str(data.get("service_state", ""))
        self.set_state(uid, state, data.get("servicer_userid", ""), kfid)
        return state

    def transfer(self, uid, kfid=None):
        """Escalation: hand the session to humans as configured. Returns a line for the transcript."""
        mode = self.cfg.kf_handoff
        if mode == "console":
            return "由 wxkf 控制台的客服接待（企业微信会话仍由接口接待）"
        kfid = kfid or self.account_of(uid)
        body = {"open_kfid": kfid, "external_userid": uid, "service_state": 2 if mode == "pool" else 3}
        if mode == "servicer":
            body["servicer_userid"] = self.cfg.kf_servicer
        self.api.call(STATE_TRANS, body)
        self.set_state(uid, body["service_state"], body.get("servicer_userid", ""), kfid)
        return ("已转入企业微信客服的待接入池" if mode == "pool"
                else f"已转给企业微信客服 {self.cfg.kf_servicer}")

    def escalate(self, inbound, promise):
        """Escalation of a WeCom conversation: the promise first (the API may send only while the
        session is the bot's), then the session moves to WeCom's pool or a servicer (`kf_handoff`),
        said in the transcript. Marked done only at the end, so a redelivered message finishes what an
        interrupted one started (the dispatcher's `_unfinished_escalation`)."""
        uid, kfid, push_id = inbound["openid"], inbound["to"], inbound["id"]
        where = None
        try:
            self.sender.deliver(push_id, uid, [promise])
            self.handoffs.log(uid, "bot", promise, once=push_id, source="escalate")
        except SessionNotOurs:
            self.session_lost(uid, kfid)  # a human has it already
        except WeChatError as exc:  # the promise is kept as undelivered; the human must still come
            log.error("escalation reply to %s not sent (%s); transferring anyway", uid, exc)
            self.handoffs.log(uid, "system", "转人工提示未能发给顾客（已记入未送达）", once=push_id + ":promise")
            where = self._transfer_or_console(uid, kfid)
        else:
            where = self._transfer_or_console(uid, kfid)
        if where:
            self.handoffs.log(uid, "system", where, once=push_id + ":transfer")
        pipe = self.redis.pipeline()
        pipe.hset(keys.sent(push_id), "transferred", 1)
        pipe.expire(keys.sent(push_id), defaults.IDEMPOTENCY_TTL)
        pipe.execute()

    def _transfer_or_console(self, uid, kfid):
        """Move the session to WeCom's humans; when WeCom refuses, the wxkf console's agents take it
        (the handoff is marked so, and the bot stays silent as in console mode)."""
        try:
            return self.transfer(uid, kfid)
        except WeChatError as exc:
            log.error("WeCom transfer of %s failed: %s; the console's agents take it", uid, exc)
            if self.handoffs.held(uid):  # never a handoff hash without its lifetime
                self.redis.hset(keys.handoff(uid), "desk", "console")
            return f"转入企业微信客服失败（{exc.errcode if exc.errcode is not None else '网络'}），请在控制台接待"

    def console_desk(self, uid):
        """Whether the wxkf console's agents, not WeCom's servicers, have this conversation:
        configured so, or because handing it to WeCom failed."""
        return self.cfg.kf_handoff == "console" or self.redis.hget(keys.handoff(uid), "desk") == "console"

    def _human_has_it(self, uid, kfid):
        """Whether WeCom's queue or a servicer holds the session, by what we last heard; asked again
        (at most once a minute per customer) when that is old or our own handoff is gone, since WeCom
        may close a session without an event (48 hours, a pool nobody took)."""
        state = self.state(uid, kfid)
        if state not in ("2", "3"):
            return False
        at = float(self.redis.hget(keys.kf_user(uid), f"at:{kfid}") or 0)
        doubtful = not self.handoffs.held(uid) or self.clock() - at > STATE_RECHECK
        if doubtful and self.redis.set(keys.kf_recheck(uid), 1, nx=True, ex=60):
            try:
                state = self.refresh_state(uid, kfid)
            except WeChatError as exc:
                log.warning("service_state/get for %s failed (%s); keeping the last known state", uid, exc)
            if state not in ("2", "3"):
                self.handoffs.end(uid, f"企业微信会话状态已为 {state}（{STATES.get(state, '未知')}）")
                return False
        return True

    def welcome(self, code, text, key):
        """The welcome message for `enter_session`, through its single-use code (protocol ref. 5.5)."""
        self.api.call(SEND_ON_EVENT, {"code": code, "msgid": msgid_for(key), "msgtype": "text",
                                      "text": {"content": text}})
        self.metrics.inc("wxkf_sends_total", api="kf_send_msg_on_event", errcode="0")

    # -- the dispatcher's side --------------------------------------------------------------------
    def handle(self, inbound, kb):
        """What only a WeCom inbound needs, before the engine. Returns (source, text) when this
        inbound is fully handled here (an event, a servicer's message, a session a human holds),
        or None when the engine should answer it."""
        uid = inbound["openid"]
        self.remember(inbound)
        h = self.handoffs
        if inbound["type"] == "event":
            return self._event(inbound, kb)
        if inbound["origin"] == ORIGIN_SERVICER:
            servicer = inbound["fields"].get("servicer_userid", "")
            text = inbound["fields"].get("Content") or f"[{inbound['type']}]"
            h.log(uid, "agent", text, once=inbound["id"], agent=servicer, via="wecom")
            if h.held(uid):
                h.touch(uid, agent=servicer)
            return "human", None
        if self._human_has_it(uid, inbound["to"]):
            # WeCom has the session with its queue or a servicer: the bot says nothing.
            h.log(uid, "shopper", inbound["fields"].get("Content") or f"[{inbound['type']}]", once=inbound["id"],
                  push=inbound["id"])
            if not h.held(uid):
                h.start(uid, "wecom_servicer", 0, via="wecom")
            return "human", None
        return None

    def _event(self, inbound, kb):
        uid, f, event = inbound["openid"], inbound["fields"], inbound["event"]
        h = self.handoffs
        if event == "enter_session":
            code = f.get("welcome_code")
            if not code:
                return "silent", None  # WeCom gives no code if a welcome went out in the last 48 h
            try:
                self.welcome(code, kb.render(kb.welcome), inbound["id"])
            except WeChatError as exc:
                self.metrics.inc("wxkf_sends_total", api="kf_send_msg_on_event",
                                 errcode=str(exc.errcode if exc.errcode is not None else "network"))
                log.warning("welcome to %s not sent: %s", uid, exc)
                return "silent", None
            h.log(uid, "bot", kb.render(kb.welcome), once=inbound["id"], source="welcome")
            return "welcome", kb.render(kb.welcome)
        if event == "msg_send_fail":
            why = FAIL_TYPES.get(f.get("fail_type", ""), f"fail_type {f.get('fail_type', '?')}")
            self.metrics.inc("wxkf_undelivered_total", reason="kf_msg_send_fail")
            self.redis.xadd(keys.UNDELIVERED, {"push_id": inbound["id"], "openid": uid,
                                               "reason": f"kf_msg_send_fail_{f.get('fail_type', '')}",
                                               "texts": "[]", "at": int(self.clock())}, maxlen=10000, approximate=True)
            h.log(uid, "system", f"企业微信报告一条消息未送达：{why}", once=inbound["id"])
            log.warning("WeCom reports a message to %s not delivered: %s", uid, why)
            return "silent", None
        if event == "session_status_change":
            change = f.get("change_type", "")
            if change in ("1", "2", "4"):  # taken from the pool, transferred, re-opened: a human has it
                servicer = f.get("new_servicer_userid", "")
                self.set_state(uid, 3, servicer, inbound["to"])
                if not h.held(uid):
                    h.start(uid, "wecom_servicer", 0, via="wecom")
                h.touch(uid, agent=servicer, claim=True)
                h.log(uid, "system", f"企业微信客服 {servicer} 接待了会话", once=inbound["id"])
            elif change == "3":  # ended: the next customer message opens a new session (state 0)
                self.set_state(uid, 4, "", inbound["to"])
                h.end(uid, f"企业微信客服 {f.get('old_servicer_userid', '')} 结束了会话".replace("  ", " "))
            return "silent", None
        return "silent", None  # recalls: nothing to answer

    def session_lost(self, uid, kfid=None):
        """kf/send_msg said the session is not ours (95018/95013): learn who has it and stay silent."""
        try:
            state = self.refresh_state(uid, kfid)
        except WeChatError as exc:
            log.warning("service_state/get for %s failed: %s", uid, exc)
            state = "3"
        if state in ("2", "3") and not self.handoffs.held(uid):
            self.handoffs.start(uid, "wecom_servicer", 0, via="wecom")
        self.handoffs.log(uid, "system", f"企业微信会话状态为 {state}（{STATES.get(state, '未知')}），机器人不再回复")
        return state


class _LockLost(Exception):
    pass


STATES = {"0": "未处理", "1": "智能助手接待", "2": "待接入池排队", "3": "人工接待", "4": "已结束"}

FAIL_TYPES = {"0": "未知原因", "1": "客服帐号已删除", "2": "应用已关闭", "4": "会话已过期（超过48小时）",
              "5": "会话已关闭", "6": "超过5条限制", "7": "未绑定视频号", "8": "主体未验证",
              "9": "未绑定视频号且主体未验证", "10": "用户拒收", "11": "企业未有成员登录企业微信App（排查方法）",
              "12": "该条消息不支持发送"}
"""msg_send_fail's fail_type (protocol ref. 5.3)."""
