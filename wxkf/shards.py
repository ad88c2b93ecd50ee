"""The shards one worker holds.

A worker reads a shard of the inbox only while it holds the shard's lease, so each shopper's messages
are handled by one worker at a time, in order. Leases are renewed with the heartbeat; `balance`
keeps about 1/N of the shards per live worker, taking free ones (and whatever their last owner
left pending) and giving back extras.
"""
import logging
import math
import threading

from . import liveness

log = logging.getLogger("wxkf.worker")


class Shards:
    def __init__(self, inbox, redis, name, lease_seconds, heartbeat_seconds):
        self.inbox = inbox
        self.redis = redis
        self.name = name
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.owned = set()
        self.fresh = set()  # owned shards whose pending entries are to be read first
        self._lock = threading.Lock()

    def beat(self, able=True):
        """Renew liveness (or, when `able` is false, say this worker cannot work) and the leases;
        drop shards whose lease was lost."""
        if able:
            liveness.beat(self.redis, self.name, max(self.lease_seconds, 2 * self.heartbeat_seconds))
        else:
            liveness.gone(self.redis, self.name)
        with self._lock:
            for shard in list(self.owned):
                if not self.inbox.renew_lease(shard, self.name, self.lease_seconds):
                    log.warning("lost lease on shard %d", shard)
                    self.owned.discard(shard)

    def balance(self):
        """Own about 1/N of the shards, N = live workers; take free ones, give back extras; take over
        what another worker left pending in an owned shard."""
        n = max(1, len(liveness.alive_workers(self.redis)))
        fair = math.ceil(self.inbox.shards / n)
        with self._lock:
            for shard in sorted(self.owned)[fair:]:
                self.inbox.release_lease(shard, self.name)
                self.owned.discard(shard)
            # A worker whose lease ran out while it was reading (Redis away longer than a lease) can
            # take an entry into its own pending list after this worker took the shard over; it then
            # leaves it alone, and reading new entries never returns it. Two leases of waiting is
            # long enough for a worker that did hold the shard to have finished the entry.
            stale_ms = int(2 * self.lease_seconds * 1000)
            for shard in sorted(self.owned):
                if self.inbox.take_over_pending(shard, self.name, min_idle_ms=stale_ms):
                    log.warning("took over messages another worker left pending on shard %d", shard)
                    self.fresh.add(shard)
            for shard in range(self.inbox.shards):
                if len(self.owned) >= fair:
                    break
                if shard not in self.owned and self.inbox.try_lease(shard, self.name, self.lease_seconds):
                    self.inbox.take_over_pending(shard, self.name)
                    self.owned.add(shard)
                    self.fresh.add(shard)

    def take(self):
        """(owned, fresh) for one round; fresh shards are reported once."""
        with self._lock:
            owned, fresh = sorted(self.owned), sorted(self.fresh)
            self.fresh.clear()
        return owned, fresh

    def holds(self, shard):
        return shard in self.owned

    def reread(self):
        """After an error: every owned shard's pending entries are read again next round."""
        with self._lock:
            self.fresh |= self.owned

    def release(self):
        """Give every lease back (stopping) and leave the live set."""
        with self._lock:
            for shard in self.owned:
                self.inbox.release_lease(shard, self.name)
            self.owned.clear()
        liveness.gone(self.redis, self.name)
