"""Change notices for live pages: the console's queue and transcripts, a Mini Program's chat page.

Every transcript line and every change of who holds a conversation adds one entry to the Redis
stream `{wxkf}:events` (`publish`): the conversation's id and what changed, never the text, so the
stream carries nothing a reader may not see. A page that is open learns of a change within
milliseconds and fetches what it shows through the ordinary JSON endpoints.

The streams are served by the live process (`wxkf live`, `wxkf.live`), never by the webhook's sync
workers: an open stream is a thread waiting there, and one `Hub` thread per process reads Redis for
all of them. When the live process is not reachable, pages poll as before.
"""
import logging
import threading
import time
from bisect import bisect_right

import redis as redis_lib

from . import keys
from .store import with_read_timeout

log = logging.getLogger("wxkf.events")

MAXLEN = 10000
"""Entries kept in the stream (about a day of a busy shop's changes); trimmed approximately."""


def publish(client, openid, what):
    """Add one change notice (on a client or a pipeline): `what` is a transcript role or "state"."""
    client.xadd(keys.EVENTS, {"o": openid, "k": what}, maxlen=MAXLEN, approximate=True)


def _order(entry_id):
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Hub:
    """One reader of the event stream per process, fanning out to every waiting request.

    `wait(after, match, timeout)` returns the notices after the stream id `after` that `match`
    accepts, waiting up to `timeout` seconds for one. Notices older than those kept in memory are read
    back from Redis, so a stream resumed with `Last-Event-ID` misses nothing the stream still holds.
    When Redis goes away the reader retries every second; waiting requests see only heartbeats."""

    def __init__(self, redis, keep=2048, block_ms=5000):
        self.redis = redis
        # Its own connection, whose read timeout outlasts the blocking read (the shared client's 2 s
        # would cut every XREAD BLOCK short).
        self._reader = with_read_timeout(redis, block_ms / 1000 + 5)
        self.block_ms = block_ms
        self._ring = []  # (order, id, openid, what), oldest first
        self._keep = keep
        self._cond = threading.Condition()
        self._last = None
        self._floor = None  # the ring holds every notice after this id
        self._thread = None
        self.connected = False

    def start(self):
        """Start the reader (once per process) and wait briefly for its starting point."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wxkf-events", daemon=True)
                self._thread.start()
            if self._last is None:
                self._cond.wait(5)
        return self

    def last_id(self):
        """The newest notice seen: a stream opened now is told of what comes after it."""
        with self._cond:
            return self._last or "0-0"

    def _run(self):
        while True:
            try:
                if self._last is None:
                    newest = self._reader.xrevrange(keys.EVENTS, count=1)
                    with self._cond:
                        self._last = self._floor = newest[0][0] if newest else "0-0"
                        self._cond.notify_all()
                got = self._reader.xread({keys.EVENTS: self._last}, block=self.block_ms, count=500)
                self.connected = True
            except redis_lib.RedisError as exc:
                if self.connected:
                    log.warning("event stream unreachable, retrying: %s", type(exc).__name__)
                self.connected = False
                time.sleep(1)
                continue
            if not got:
                continue
            with self._cond:
                for entry_id, fields in got[0][1]:
                    self._ring.append((_order(entry_id), entry_id, fields.get("o", ""), fields.get("k", "")))
                    self._last = entry_id
                if len(self._ring) > 2 * self._keep:  # trimmed in batches: appends stay O(1)
                    self._floor = self._ring[-self._keep - 1][1]
                    del self._ring[:-self._keep]
                self._cond.notify_all()

    def wait(self, after, match, timeout):
        """([(id, openid, what)...] after the stream id `after` that `match(openid, what)` accepts,
        the id to resume from). Waits up to `timeout` seconds while there is none."""
        after = after or self.last_id()
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                position = _order(after)
                if self._floor is None or position >= _order(self._floor):
                    found = self._ring[bisect_right(self._ring, position, key=lambda e: e[0]):]
                    if found:
                        after = found[-1][1]
                        picked = [e[1:] for e in found if match(e[2], e[3])]
                        if picked:
                            return picked, after
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return [], after
                    self._cond.wait(left)
                    continue
                floor = self._floor
            # Older than memory (a stream resumed after a long gap): read those from Redis.
            try:
                entries = self.redis.xrange(keys.EVENTS, min="(" + after, max=floor, count=1000)
            except redis_lib.RedisError:
                # Never return at once with nothing: the caller would loop straight back here.
                time.sleep(max(0.0, min(deadline - time.monotonic(), 1.0)))
                return [], after
            after = entries[-1][0] if entries else floor
            picked = [(i, f.get("o", ""), f.get("k", "")) for i, f in entries if match(f.get("o", ""), f.get("k", ""))]
            if picked:
                return picked, after
