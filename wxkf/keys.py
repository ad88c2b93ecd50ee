"""Every Redis key wxkf uses, under the `{wxkf}:` namespace.

The braces are a Redis Cluster hash tag: every key hashes to the slot of "wxkf", so each Lua script
and transaction (a push's dedup, inbox entry, handoff and metrics in one step) stays on one node and
the same code runs on one Redis, on Sentinel and on a cluster. On a cluster that node's replica
takes over when it fails; wxkf's keys are not spread over the masters (the load report takes 500
pushes/s through one Redis: docs/benchmarks.md).
"""

NS = "{wxkf}"

LEGACY_NS = "wxkf"
"""The namespace before the hash tag; `store.migrate_keys` renames such keys once."""

SCHEMA = f"{NS}:schema"
"""Set once the keys of an older wxkf (`wxkf:...`) were renamed into the tagged namespace."""


def dedup(push_id):
    return f"{NS}:dedup:{push_id}"


def inbox(shard):
    return f"{NS}:inbox:{shard}"


INBOX_GROUP = "workers"


def shard_lease(shard):
    return f"{NS}:lease:{shard}"


WORKERS = f"{NS}:workers"
"""Sorted set: worker name -> the time (s) its liveness expires. /healthz reads it with one range
query, never a scan of the keyspace."""


def sent(push_id):
    """Hash: reply part index -> WeChat's answer, so a re-delivered message is not answered twice."""
    return f"{NS}:sent:{push_id}"


def token(appid):
    return f"{NS}:token:{appid}"


def token_lock(appid):
    return f"{NS}:token:{appid}:lock"


def signed_request(timestamp, nonce):
    """The digest of the body first seen with this signed (timestamp, nonce)."""
    return f"{NS}:signed:{timestamp}:{nonce[:64]}"


def quota(openid):
    return f"{NS}:quota:{openid}"


def window_opened(push_id):
    """Set once a push has opened its shopper's send window, so a redelivery does not open it again."""
    return f"{NS}:opened:{push_id}"


OUTBOX = f"{NS}:outbox"
"""Stream of agents' replies queued by the console for the worker to send."""

UNDELIVERED = f"{NS}:undelivered"
"""Stream of replies WeChat refused or we could not send, kept for agents and operators."""

METRICS = f"{NS}:metrics"
"""Hash of Prometheus counter and histogram-bucket values shared by all processes."""


def handoff(openid):
    """Hash: a human holds this shopper's conversation (status, reason, priority, since, activity, agent)."""
    return f"{NS}:handoff:{openid}"


HANDOFFS = f"{NS}:handoffs"
"""Sorted set of held shoppers, scored so higher priority and longer waiting come first."""


def conversation(openid):
    """JSON of the dialogue state: the last turns and pending suggestions (`ConversationStore`)."""
    return f"{NS}:convo:{openid}"


def transcript(openid):
    """List of JSON turns (shopper, bot, agent, system) for the console."""
    return f"{NS}:transcript:{openid}"


CONVERSATIONS = f"{NS}:conversations"
"""Sorted set: every shopper with a transcript, scored by the time of its last line (the console's
conversation list)."""


def user(name):
    """Hash: role, password hash, created."""
    return f"{NS}:user:{name}"


def login_failures(digest):
    """Failed logins of one (name, address), keyed by a fixed-size digest of both."""
    return f"{NS}:loginfail:{digest}"


KB_LOCK = f"{NS}:kb:lock"
"""Held while one knowledge edit reads, changes and writes a file."""


def user_sessions(name):
    """Set of an account's open console session ids, so a password change or disable ends them all."""
    return f"{NS}:usessions:{name}"


def login_failure_index(name_digest):
    """Set of the failed-login keys of one typed name (all addresses), for `wxkf user unlock`."""
    return f"{NS}:loginfail-index:{name_digest}"


def console_session(sid):
    """A console login: the account name, until logout or expiry."""
    return f"{NS}:csession:{sid}"


AUDIT = f"{NS}:audit"
"""Stream of agent and admin actions (who, action, target, at, detail)."""


KB_VERSIONS = f"{NS}:kb:versions"
"""Stream of knowledge edits: file, text before and after, who, action, intent, at."""

UNANSWERED = f"{NS}:unanswered"
"""Sorted set: shopper questions the bot could not answer, scored by how often they came."""


REVIEW = f"{NS}:review"
"""Hash: shopper text -> JSON of a bot answer an agent marked wrong (intent, answer, by, at, openid),
for the admins' review list."""


def stats_day(day):
    """Hash per UTC day number: replies by source."""
    return f"{NS}:stats:day:{day}"


STATS_TOTAL = f"{NS}:stats:total"
"""Hash of all-time counters (escalations by reason)."""

FIRST_RESPONSE = f"{NS}:stats:first_response"
"""List of seconds from escalation to the first agent reply (last 1000)."""


# -- WeCom 微信客服 (wxkf.wecom) ------------------------------------------------------------------
KF_WAKE = f"{NS}:kf:wake"
"""Hash: open_kfid -> the Token of its latest callback. An entry means "messages wait to be pulled";
it is removed only by the pull that saw that very token through to the end."""

KF_RETRY = f"{NS}:kf:retry"
"""Hash: open_kfid -> "time:failures" before which a failed pull is not tried again."""


def kf_cursor(open_kfid):
    """sync_msg's `next_cursor` for one 微信客服 account, saved after every page."""
    return f"{NS}:kf:cursor:{open_kfid}"


def kf_pull_lock(open_kfid):
    """Held by the one process pulling an account's messages."""
    return f"{NS}:kf:pull:{open_kfid}"


def kf_user(external_userid):
    """Hash: the 微信客服 account a WeCom customer talks to, and the session state last known
    (open_kfid, state, servicer, at). Its presence marks a conversation as a WeCom one."""
    return f"{NS}:kf:user:{external_userid}"


def kf_recheck(external_userid):
    """Set for a minute after asking WeCom for a customer's session state."""
    return f"{NS}:kf:recheck:{external_userid}"


KF_HORIZON = f"{NS}:kf:horizon"
"""Hash: open_kfid -> the time before which pulled messages are history (first start), kept until a
pull of that account reaches the end."""

KF_FIRST_WAKE = f"{NS}:kf:first_wake"
"""Hash: open_kfid -> when its first callback came, while no cursor is saved yet (first start)."""


def api_session(sid):
    """A Mini Program page's session: the shopper's openid, until it expires or is refreshed away."""
    return f"{NS}:apisession:{sid}"


def api_login_rate(address, minute):
    """Code exchanges from one client address in one minute."""
    return f"{NS}:apilogin:{address[:64]}:{minute}"


EVENTS = f"{NS}:events"
"""Stream of change notices for live pages: conversation id and what changed, never text (`wxkf.events`)."""


def page_mailbox(openid):
    """Stream of what a Mini Program chat page is told: the bot's results and agents' replies (`wxkf.page`)."""
    return f"{NS}:page:mailbox:{openid}"


def page_active(openid):
    """Set while a shopper's conversation is on the in-page channel (last written from the page)."""
    return f"{NS}:page:active:{openid}"


def api_chat_rate(openid, minute):
    """Page messages from one shopper in one minute."""
    return f"{NS}:apichat:{openid}:{minute}"


def api_waiting(openid):
    """Requests of one shopper waiting in the live process (a chat answer or a long poll)."""
    return f"{NS}:apiwait:{openid}"
