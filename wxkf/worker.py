"""The worker: takes pushes from the inbox, decides, replies.

Delivery is at-least-once (stream consumer group; a killed worker's entries are taken over by the
next owner of its shards) and replies are sent once (the sender's per-message idempotency record).
One worker owns a shard at a time, so a shopper's messages are answered in order; several workers
share the shards evenly. The parts: `wxkf.shards` (leases and balance), `wxkf.dispatch` (one push),
the agents' outbox (`wxkf.agents.outbox`), and the loop here. No Flask code is imported.
"""
import logging
import os
import signal
import socket
import threading
import time

import redis as redis_lib

from .dispatch import Dispatcher
from .shards import Shards
from .store import migrate_keys

log = logging.getLogger("wxkf.worker")


class Worker:
    def __init__(self, svc, responder, name=None, conversations=None):
        self.svc = svc
        self.cfg = svc.config
        self.redis = svc.redis
        self.inbox = svc.inbox
        self.outbox = svc.outbox
        self.sender = svc.sender
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.dispatcher = Dispatcher(svc, responder, conversations)
        self.responder = responder
        self.conversations = self.dispatcher.conversations
        self.shards = Shards(svc.inbox, svc.redis, self.name, self.cfg.lease_seconds, self.cfg.heartbeat_seconds)
        self._stop = threading.Event()   # set once the main loop has ended: stops the heartbeat
        self._stopping = False           # asked to stop (stop(), a signal)
        self._failing_since = None
        self._last_balance = 0.0

    def beat(self):
        """Renew liveness and leases; alive but unable to work (Redis errors in a row) is not alive
        for /healthz."""
        self.shards.beat(able=self.failing_for() <= 2 * self.cfg.heartbeat_seconds)

    def balance(self):
        self.shards.balance()

    def _heartbeat_loop(self):
        while not self._stop.wait(self.cfg.heartbeat_seconds):
            try:
                self.beat()
            except redis_lib.RedisError as exc:
                log.error("heartbeat failed: %s", exc)

    def run_once(self, block_ms=1000):
        """One round: agents' replies queued by the console, then pending entries of newly owned
        shards, then new entries; stops between entries once asked to. Returns the number of pushes
        handled."""
        self.outbox.drain(self.name)
        if self.svc.kf is not None:
            self._pull_wecom()
        owned, fresh = self.shards.take()
        entries = self.inbox.read(fresh, self.name, pending=True, count=10_000) if fresh else []
        if not entries:
            entries = self.inbox.read(owned, self.name, block_ms=block_ms)
        handled = 0
        for shard, entry_id, inbound in entries:
            if self.stopping:
                break  # stopping: what was read and not started stays pending for the next owner
            if self.shards.holds(shard):
                self.dispatcher.handle(shard, entry_id, inbound)
                handled += 1
        return handled

    def _pull_wecom(self):
        """WeCom messages a callback announced, into the inbox. Nothing WeCom sends may stop the
        worker, whose inbox also serves the Mini Program: only a Redis error goes up (step retries)."""
        try:
            self.svc.kf.pull_due(self.name)
        except redis_lib.RedisError:
            raise
        except Exception:
            log.exception("WeCom pull failed unexpectedly; the wake-up stays and is retried next round")

    def failing_for(self):
        """Seconds the main loop has been failing on Redis errors (0 when it works)."""
        return 0.0 if self._failing_since is None else time.monotonic() - self._failing_since

    def step(self):
        """One round of the loop; after a Redis error, None (the caller waits a little)."""
        try:
            self.sender.record_pending()  # sends Redis missed while it was away, before anything is re-read
            if self.svc.kf is not None:
                self.svc.kf.sender.record_pending()
            if time.monotonic() - self._last_balance > self.cfg.heartbeat_seconds:
                self.balance()
                self._last_balance = time.monotonic()
            handled = self.run_once()
            self._failing_since = None
            return handled
        except redis_lib.RedisError as exc:
            self._recover(exc)
            return None

    def _recover(self, exc):
        """After a Redis error: the entries this worker took but did not acknowledge are read again
        (they would otherwise wait in the pending list until a restart), and a Redis that came back
        empty gets the consumer groups back, reading from the start of what was queued meanwhile."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self.shards.reread()
        self.outbox.reread()
        log.error("Redis error (%s); retrying, unacknowledged messages will be read again", exc)
        if "NOGROUP" in str(exc):
            try:
                self.inbox.ensure_groups()
                self.outbox.ensure_group()
                log.warning("the inbox's consumer groups were gone (Redis restarted empty?); recreated them")
            except redis_lib.RedisError as again:
                log.error("could not recreate the inbox's consumer groups: %s", again)

    def run(self):
        self.inbox.ensure_groups()
        self.outbox.ensure_group()
        self.beat()
        self.balance()
        self._last_balance = time.monotonic()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        log.info("worker %s started, %d shards", self.name, len(self.shards.owned))
        while not self.stopping:
            if self.step() is None:
                time.sleep(1)
        self._stop.set()
        try:
            self.shards.release()
        except redis_lib.RedisError as exc:
            log.warning("could not release shard leases (%s); they expire in %ss", exc, self.cfg.lease_seconds)
        log.info("worker %s stopped", self.name)

    @property
    def stopping(self):
        return self._stopping

    def stop(self, *_):
        """Stop after the message in hand (the main loop ends within its 1 s read). It only sets a
        flag, because it is the SIGTERM and SIGINT handler: a handler that takes a lock (an Event's
        set()) deadlocks when a second signal interrupts it holding that lock, which Ctrl-C followed
        by run.sh's SIGTERM did."""
        self._stopping = True


def build_responder(cfg):
    """The dialogue engine over the knowledge folder; the model is loaded here, once per process."""
    from .dialogue.engine import engine_from_config
    return engine_from_config(cfg, worker=True)


def wait_for_redis(r, seconds=30):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return r.ping()
        except redis_lib.RedisError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for Redis: %s", exc)
            time.sleep(0.5)


def lower_priority(cfg):
    """Put this process, and every thread it starts later (the model's), below the web processes: on a
    small box the model's threads would otherwise take the cores from the processes that must
    acknowledge WeChat within 5 s (measured in docs/benchmarks.md). Returns what was done."""
    if cfg.worker_idle and hasattr(os, "sched_setscheduler"):
        try:
            # Linux's SCHED_IDLE: a core only when no ordinary process wants it, and given up the moment
            # one wakes (a nice level still waits for the scheduler's wake-up granularity).
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError as exc:
            log.warning("worker_idle: cannot use the idle CPU policy (%s); using worker_nice", exc)
    if cfg.worker_nice:
        os.nice(cfg.worker_nice)
        return f"nice {cfg.worker_nice}"
    return "normal"


def main(svc):
    from .errors import KnowledgeError
    log.info("worker CPU priority: %s (worker_idle, worker_nice)", lower_priority(svc.config))
    wait_for_redis(svc.redis)
    migrate_keys(svc.redis)  # Redis may have been down when the services were built
    try:
        responder = build_responder(svc.config)
    except KnowledgeError as exc:  # broken and no good version remembered: say what to fix
        log.error("cannot start: the knowledge base is broken and no earlier good version exists:\n%s",
                  "\n".join(exc.problems))
        raise SystemExit(1) from None
    worker = Worker(svc, responder)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run()
