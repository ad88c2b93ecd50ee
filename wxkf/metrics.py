"""Prometheus metrics shared by every process through one Redis hash.

Counters and histogram buckets are HINCRBY'd fields named exactly as they render
(`name{label="v"}`), so `/metrics` is a single HGETALL plus the live queue gauges.
"""
import threading
import time

from . import keys

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

FAMILIES = {
    "wxkf_pushes_total": ("counter", "Pushes accepted from WeChat, by message type."),
    "wxkf_pushes_rejected_total": ("counter", "Pushes refused, by HTTP status and reason."),
    "wxkf_pushes_ignored_total": ("counter", "Well-formed pushes wxkf does not act on (other events, unknown types)."),
    "wxkf_duplicates_total": ("counter", "Pushes dropped as WeChat retries of one already queued."),
    "wxkf_jobs_total": ("counter", "Messages processed by workers, by outcome."),
    "wxkf_sends_total": ("counter", "Calls to WeChat's send APIs, by API and errcode (0 = ok)."),
    "wxkf_agent_replies_total": ("counter", "Agents' replies sent by workers, by outcome (sent, undelivered)."),
    "wxkf_undelivered_total": ("counter", "Replies that could not be delivered, by reason."),
    "wxkf_token_refreshes_total": ("counter", "Access-token fetches from WeChat."),
    "wxkf_kf_pulls_total": ("counter", "WeCom 微信客服 pulls (sync_msg until has_more is 0), by outcome."),
    "wxkf_kf_messages_total": ("counter", "WeCom 微信客服 messages and events pulled and queued (before dedup)."),
    "wxkf_push_seconds": ("histogram", "Time to acknowledge a push, in the webhook."),
    "wxkf_job_seconds": ("histogram", "Time from a push's arrival to its reply being sent."),
    "wxkf_send_seconds": ("histogram", "Duration of one call to WeChat's send API."),
}


def _escape(value):
    """A label value as Prometheus' text format requires: backslash, quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def field(name, **labels):
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


class Metrics:
    def __init__(self, redis, flush_seconds=1.0):
        self.redis = redis
        self.flush_seconds = flush_seconds
        self._pending = {}
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._names = {}

    def inc(self, name, n=1, pipe=None, **labels):
        (pipe or self.redis).hincrby(keys.METRICS, field(name, **labels), n)

    def observe(self, name, seconds, pipe=None, **labels):
        target = pipe or self.redis.pipeline(transaction=False)
        for le in BUCKETS:
            if seconds <= le:
                target.hincrby(keys.METRICS, field(name + "_bucket", le=str(le), **labels), 1)
        target.hincrby(keys.METRICS, field(name + "_bucket", le="+Inf", **labels), 1)
        target.hincrbyfloat(keys.METRICS, field(name + "_sum", **labels), seconds)
        target.hincrby(keys.METRICS, field(name + "_count", **labels), 1)
        if pipe is None:
            target.execute()

    def _histogram_fields(self, name, labels):
        key = (name, tuple(sorted(labels.items())))
        names = self._names.get(key)
        if names is None:
            names = self._names[key] = (
                [field(name + "_bucket", le=str(le), **labels) for le in BUCKETS],
                field(name + "_bucket", le="+Inf", **labels), field(name + "_sum", **labels),
                field(name + "_count", **labels))
        return names

    def observe_buffered(self, name, seconds, **labels):
        """Like observe(), batched per process: hot paths pay one Redis round trip a second, not one each."""
        buckets, inf, sum_f, count_f = self._histogram_fields(name, labels)
        with self._lock:
            pending = self._pending
            for le, f in zip(BUCKETS, buckets):
                if seconds <= le:
                    pending[f] = pending.get(f, 0) + 1
            pending[inf] = pending.get(inf, 0) + 1
            pending[sum_f] = pending.get(sum_f, 0.0) + seconds
            pending[count_f] = pending.get(count_f, 0) + 1
            due = time.monotonic() - self._last_flush >= self.flush_seconds
        if due:
            self.flush()

    def flush(self):
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        if not pending:
            return
        pipe = self.redis.pipeline(transaction=False)
        for f, v in pending.items():
            if isinstance(v, float):
                pipe.hincrbyfloat(keys.METRICS, f, v)
            else:
                pipe.hincrby(keys.METRICS, f, v)
        pipe.execute()

    def render(self, gauges=()):
        """Prometheus text format: the shared counters plus live gauges [(name, help, value)]."""
        values = self.redis.hgetall(keys.METRICS)
        lines = []
        for name, (kind, help_text) in FAMILIES.items():
            rows = sorted((k, v) for k, v in values.items()
                          if k == name or k.startswith(name + "{") or k.startswith(name + "_"))
            if kind == "counter" and not rows:
                rows = [(name, "0")]
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{k} {v}" for k, v in rows)
        for name, help_text, value in gauges:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {value}")
        return "\n".join(lines) + "\n"
