"""Tunable constants, each with its unit and the reason for its value."""

MAX_BODY_BYTES = 256 * 1024
"""Bytes. WeChat's pushes are a few KB (safe mode triples them); anything far larger is abuse."""

TIMESTAMP_WINDOW = 600
"""Seconds a push's `timestamp` may differ from our clock. WeChat retries within ~15 s; the rest is clock skew."""

DEDUP_TTL = 86400
"""Seconds a push id is remembered. Far longer than WeChat's retries (3 tries, 5 s apart) and the timestamp window."""

INBOX_SHARDS = 16
"""Streams the inbox is split into. One worker owns a shard at a time, which keeps each shopper's messages in order."""

INBOX_MAXLEN = 100_000
"""Approximate entries kept per shard stream (acknowledged entries are trimmed away by XADD MAXLEN ~)."""

LEASE_SECONDS = 15
"""Seconds a worker's shard lease lives without a heartbeat; a SIGKILLed worker's shards move on after this."""

HEARTBEAT_SECONDS = 3
"""Seconds between a worker's lease renewals and liveness beats."""

IDEMPOTENCY_TTL = 7 * 86400
"""Seconds the per-message "already sent" record is kept."""

TOKEN_MARGIN = 300
"""Seconds before an access token's expiry that we stop using it (WeChat renews stable tokens 5 min early)."""

TOKEN_LOCK_SECONDS = 10
"""Seconds the single-flight token refresh lock is held at most."""

HTTP_TIMEOUT = 5.0
"""Seconds for one call to WeChat's API."""

SEND_ATTEMPTS = 3
"""Tries for a send that failed in a way retrying can fix (network, 5xx, errcode -1 system busy)."""

TEXT_LIMIT_BYTES = 2048
"""UTF-8 bytes per text message: WeCom documents 2048; developers measured the same for MP/OA."""

USER_MSG_QUOTA = 5
"""Messages allowed per shopper message, within USER_MSG_WINDOW (both channels, protocol ref. 2.4)."""

USER_MSG_WINDOW = 48 * 3600
"""Seconds after a shopper's last message during which we may send (45015 after)."""

EVENT_QUOTA = {"user_enter_tempsession": (1, 60), "subscribe": (3, 60), "SCAN": (3, 60), "CLICK": (3, 60)}
"""Event-triggered allowances (messages, seconds). MP enter-session: the stricter of the two doc copies."""

TYPING_WINDOW = 30
"""Seconds after a shopper's message during which WeChat accepts a typing indicator (45080 after)."""
