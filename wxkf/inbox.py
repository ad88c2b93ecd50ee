"""The inbox: deduplicated pushes queued in Redis streams for the workers.

Pushes are spread over `shards` streams by shopper (crc32 of the openid). A worker holds a lease
on a shard before reading it, so exactly one worker reads a shard at a time and each shopper's
messages are handled in the order WeChat sent them. Entries are read through one consumer group
(at-least-once): an entry is deleted only after the worker acknowledges it, and the next owner of a
shard first takes over whatever the previous owner left pending.
"""
import hashlib
import json
import os
import threading
import time
import zlib

import redis as redis_lib

from . import defaults, keys
from .agents.handoff import start_lua
from .errors import BadSignature
from .store import (DELETE_IF_EQUAL, RENEW_IF_OWNER, REPLICA_WAIT_MS, NotReplicated, ensure_group, is_cluster,
                    on_one_connection)


class Replayed(BadSignature):
    """A captured (timestamp, nonce, signature) with a different body."""

# Dedup, handoff and enqueue in one atomic step: a push is queued exactly once or not at all, and an
# escalating push starts the human handoff in the same step. Returns {entry id or '', held, started},
# or {'', -1, 0} for a replay: this request's (timestamp, nonce) signed another body before.
_ENQUEUE = """
if KEYS[6] then
  local seen = redis.call('GET', KEYS[6])
  if seen and seen ~= ARGV[11] then return {'', -1, 0} end
  if not seen then redis.call('SET', KEYS[6], ARGV[11], 'EX', ARGV[12]) end
end
local held = redis.call('EXISTS', KEYS[4])
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  local started = 0
  if held == 0 and ARGV[6] ~= '' then
""" + start_lua("KEYS[4]", "KEYS[5]", "ARGV[6]", "ARGV[7]", "ARGV[8]", "ARGV[9]", "'webhook'", "ARGV[10]") + """
    started = 1
    held = 1
  end
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'push', ARGV[3], 'held', held,
                        'started', started)
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
  return {id, held, started}
end
redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
return {'', held, 0}
"""



class HotScript:
    """A Lua script run on a connection this process keeps for it.

    The webhook runs one script per push; skipping the pool's checkout and redis-py's Script
    wrapper saves a measurable share of a push's cost on a small machine. Reconnects after a fork
    or a dropped connection; loads the script when Redis has forgotten it (restart, SCRIPT FLUSH).
    """

    def __init__(self, redis, source, replicas=0):
        self.redis = redis
        self.source = source
        self.replicas = replicas  # with > 0: WAIT until that many replicas have the script's writes
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._conn = None
        self._pid = None
        self._lock = threading.Lock()
        self._script = None

    def __call__(self, keys, args):
        if is_cluster(self.redis):
            return self._on_cluster(keys, args)
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._pid != os.getpid():
                    self._conn = self.redis.connection_pool.make_connection()
                    self._pid = os.getpid()
                try:
                    self._conn.connect()  # no-op once connected; a Sentinel connection asks for the master
                    try:
                        self._conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
                        result = self._conn.read_response()
                    except redis_lib.exceptions.NoScriptError:
                        self._conn.send_command("EVAL", self.source, len(keys), *keys, *args)
                        result = self._conn.read_response()
                    if self.replicas:
                        # On this very connection: WAIT covers the writes this client made.
                        self._conn.send_command("WAIT", self.replicas, REPLICA_WAIT_MS)
                        if int(self._conn.read_response()) < self.replicas:
                            raise NotReplicated(f"fewer than {self.replicas} replica(s) confirmed the write")
                    return result
                except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError):
                    # The same connection object reconnects next time (a new one per failure would
                    # count against the pool's limit, as none is ever released).
                    self._conn.disconnect()
                    if attempt == 2:
                        raise

    def _on_cluster(self, keys, args):
        if not self.replicas:  # the cluster client finds the slot's master (and follows MOVED)
            if self._script is None:
                self._script = self.redis.register_script(self.source)
            return self._script(keys=keys, args=args)
        with on_one_connection(self.redis, keys[0]) as pipe:  # WAIT on the script's own connection
            pipe.eval(self.source, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.replicas, REPLICA_WAIT_MS)
            result, confirmed = pipe.execute()
        if int(confirmed) < self.replicas:
            raise NotReplicated(f"fewer than {self.replicas} replica(s) confirmed the write")
        return result


def shard_of(openid, shards):
    return zlib.crc32(openid.encode()) % shards


class Inbox:
    def __init__(self, redis, shards=defaults.INBOX_SHARDS, dedup_ttl=defaults.DEDUP_TTL,
                 maxlen=defaults.INBOX_MAXLEN, replicas=0):
        self.redis = redis
        self.shards = shards
        self.dedup_ttl = dedup_ttl
        self.maxlen = maxlen
        self._enqueue = HotScript(redis, _ENQUEUE, replicas=replicas)
        self._renew = redis.register_script(RENEW_IF_OWNER)
        self._release = redis.register_script(DELETE_IF_EQUAL)

    # -- webhook side -------------------------------------------------------------------------
    def enqueue(self, inbound, escalation=None, hold_seconds=1800, signed=None):
        """Queue a push once; start a handoff when `escalation` (reason, priority) is given.

        `signed`: (timestamp, nonce, body digest, seconds to remember) of the request. The signature
        covers only the timestamp and nonce, so a captured pair must not carry another body: that is
        a replay, and raises Replayed (WeChat's own retries send the same body and pass).

        Returns (stream id or None for a duplicate, held, started): `held` when a human holds the
        shopper after this push, `started` when this push started it.
        """
        shard = shard_of(inbound["openid"], self.shards)
        now = time.time()
        payload = json.dumps(dict(inbound, received_at=now), ensure_ascii=False)
        kind = inbound["event"] or inbound["type"]
        reason, priority = escalation or ("", 0)
        script_keys = [keys.dedup(inbound["id"]), keys.inbox(shard), keys.METRICS, keys.handoff(inbound["openid"]),
                       keys.HANDOFFS]
        args = [self.dedup_ttl, self.maxlen, payload, f'wxkf_pushes_total{{type="{kind}"}}',
                "wxkf_duplicates_total", reason, priority, now, hold_seconds, inbound["openid"]]
        if signed:
            timestamp, nonce, digest, remember = signed
            script_keys.append(keys.signed_request(timestamp, nonce))
            args += [digest, int(remember)]
        entry, held, started = self._enqueue(keys=script_keys, args=args)
        if held == -1:
            raise Replayed("this timestamp and nonce were signed for another body")
        if isinstance(entry, bytes):
            entry = entry.decode()
        return entry or None, bool(held), bool(started)

    # -- worker side --------------------------------------------------------------------------
    def ensure_groups(self):
        for shard in range(self.shards):
            ensure_group(self.redis, keys.inbox(shard), keys.INBOX_GROUP)

    def try_lease(self, shard, owner, seconds):
        return bool(self.redis.set(keys.shard_lease(shard), owner, nx=True, px=int(seconds * 1000)))

    def renew_lease(self, shard, owner, seconds):
        return bool(self._renew(keys=[keys.shard_lease(shard)], args=[owner, int(seconds * 1000)]))

    def release_lease(self, shard, owner):
        self._release(keys=[keys.shard_lease(shard)], args=[owner])

    def take_over_pending(self, shard, consumer, min_idle_ms=0):
        """Move the shard's pending entries that have waited at least `min_idle_ms` to `consumer` (we
        hold the lease, so nobody else reads it); returns how many moved."""
        start, moved = "0-0", 0
        while True:
            reply = self.redis.execute_command("XAUTOCLAIM", keys.inbox(shard), keys.INBOX_GROUP, consumer,
                                               min_idle_ms, start, "COUNT", 100, "JUSTID")
            start = reply[0]
            moved += len(reply[1])
            if start == "0-0" or not reply[1]:
                return moved

    def read(self, shards, consumer, pending=False, block_ms=1000, count=10):
        """Entries for `consumer` from the given shards: its own pending ones, or new ones.

        Returns [(shard, entry_id, inbound)] in stream order per shard.
        """
        if not shards:
            time.sleep(block_ms / 1000)
            return []
        streams = {keys.inbox(s): ("0" if pending else ">") for s in shards}
        reply = self.redis.xreadgroup(keys.INBOX_GROUP, consumer, streams, count=count,
                                      block=None if pending else block_ms)
        out = []
        for stream, entries in reply or []:
            shard = int(stream.rsplit(":", 1)[1])
            for entry_id, fields in entries:
                if fields and "push" in fields:
                    inbound = json.loads(fields["push"])
                    inbound["held"] = fields.get("held") == "1"
                    inbound["started"] = fields.get("started") == "1"
                    out.append((shard, entry_id, inbound))
                else:
                    # An entry trimmed away while pending: acknowledge so it stops coming back.
                    self.ack(shard, entry_id)
        return out

    def ack(self, shard, entry_id):
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(keys.inbox(shard), keys.INBOX_GROUP, entry_id)
        pipe.xdel(keys.inbox(shard), entry_id)
        pipe.execute()

    def stats(self):
        """(depth, age in seconds of the oldest queued entry) across all shards."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.xlen(keys.inbox(shard))
            pipe.xrange(keys.inbox(shard), count=1)
        res = pipe.execute()
        depth = sum(res[0::2])
        oldest = [int(r[0][0].split("-")[0]) for r in res[1::2] if r]
        age = max(0.0, time.time() - min(oldest) / 1000) if oldest else 0.0
        return depth, age
