"""The worker: takes pushes from the inbox, decides, replies.

Delivery is at-least-once (stream consumer group; a killed worker's entries are taken over by the
next owner of its shards) and replies are sent once (the sender's per-message idempotency record).
One worker owns a shard at a time, so a shopper's messages are answered in order; several workers
share the shards evenly.
"""
import json
import logging
import math
import os
import signal
import socket
import threading
import time

import redis as redis_lib

from . import defaults, keys
from .dialogue.decision import Action, Decision, Message
from .errors import WeChatError
from . import ops
from .ops import alive_workers
from .wechat.push import MESSAGE_TYPES

log = logging.getLogger("wxkf.worker")


class Worker:
    def __init__(self, svc, responder, name=None, conversations=None):
        from .dialogue.conversation import ConversationStore
        self.svc = svc
        self.conversations = conversations or ConversationStore(svc.redis)
        self.cfg = svc.config
        self.redis = svc.redis
        self.inbox = svc.inbox
        self.sender = svc.sender
        self.outbox = svc.outbox
        self.responder = responder
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.owned = set()
        self.fresh = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failing_since = None
        self._last_balance = 0.0

    # -- shards and liveness --------------------------------------------------------------------
    def beat(self):
        """Renew liveness and leases; drop shards whose lease we lost."""
        ttl = max(self.cfg.lease_seconds, 2 * self.cfg.heartbeat_seconds)
        if self.failing_for() > 2 * self.cfg.heartbeat_seconds:
            # Alive but unable to work (Redis errors in a row): /healthz must say so.
            ops.gone(self.redis, self.name)
        else:
            ops.beat(self.redis, self.name, ttl)
        with self._lock:
            for shard in list(self.owned):
                if not self.inbox.renew_lease(shard, self.name, self.cfg.lease_seconds):
                    log.warning("lost lease on shard %d", shard)
                    self.owned.discard(shard)

    def balance(self):
        """Own about 1/N of the shards, N = live workers; take free ones, give back extras."""
        n = max(1, len(alive_workers(self.redis)))
        fair = math.ceil(self.inbox.shards / n)
        with self._lock:
            for shard in sorted(self.owned)[fair:]:
                self.inbox.release_lease(shard, self.name)
                self.owned.discard(shard)
            for shard in range(self.inbox.shards):
                if len(self.owned) >= fair:
                    break
                if shard not in self.owned and self.inbox.try_lease(shard, self.name, self.cfg.lease_seconds):
                    self.inbox.take_over_pending(shard, self.name)
                    self.owned.add(shard)
                    self.fresh.add(shard)

    def _heartbeat_loop(self):
        while not self._stop.wait(self.cfg.heartbeat_seconds):
            try:
                self.beat()
            except redis_lib.RedisError as exc:
                log.error("heartbeat failed: %s", exc)

    # -- processing -----------------------------------------------------------------------------
    def process(self, inbound):
        """Handle one push: window bookkeeping, handoff, typing, decision, reply. Returns the Decision."""
        openid, push_id = inbound["openid"], inbound["id"]
        kind = inbound["type"]
        if kind in MESSAGE_TYPES:
            self.sender.open_window(openid, "message", inbound["create_time"], push_id)
        elif inbound["event"]:
            self.sender.open_window(openid, inbound["event"], inbound["create_time"], push_id)
        message = Message.from_inbound(inbound)
        handoffs = self.svc.handoffs
        if inbound["event"] in ("kf_create_session", "kf_switch_session"):
            handoffs.touch(openid, agent=inbound["fields"].get("KfAccount") or inbound["fields"].get("ToKfAccount"),
                           claim=True)
            return Decision(Action.SILENT, source="silent")
        if inbound["event"] == "kf_close_session":
            handoffs.end(openid, f"微信客服 {inbound['fields'].get('KfAccount', '')} 结束了会话")
            return Decision(Action.SILENT, source="silent")
        if kind in MESSAGE_TYPES:
            handoffs.log(openid, "shopper", message.text or f"[{kind}]", once=push_id, push=push_id)
        if inbound.get("started"):
            # The webhook escalated and answered WeChat with transfer_customer_service.
            state = handoffs.get(openid) or {}
            handoffs.announce(openid, state.get("reason", ""), once=push_id)
            return self._escalated(inbound, Decision(Action.ESCALATE, source="escalate", reason=state.get("reason"),
                                                     priority=int(state.get("priority", 0))))
        if inbound.get("held") or handoffs.held(openid):
            return Decision(Action.SILENT, source="human")  # a human has this conversation
        if (message.kind == "text" and time.time() - inbound["create_time"] < defaults.TYPING_WINDOW
                and not self.redis.hexists(keys.sent(push_id), "plan")):
            self.sender.typing(openid)
        decision = self._decide_once(push_id, openid, message)
        if decision.action == Action.ESCALATE:
            handoffs.start(openid, decision.reason or "request", decision.priority, via="worker")
            return self._escalated(inbound, decision)
        if decision.action != Action.SILENT and decision.text:
            self.sender.deliver(push_id, openid, [decision.text])
            handoffs.log(openid, "bot", decision.text, once=push_id, source=decision.source, intent=decision.intent)
        return decision

    def _decide_once(self, push_id, openid, message):
        """The decision for a push, made once: it is stored with the conversation in one transaction,
        and a push redelivered after a crash or a Redis outage reuses it. Deciding again would see the
        question already in the conversation and escalate it as a repeated question."""
        key = keys.sent(push_id)
        recorded = self.redis.hget(key, "decision")
        if recorded is not None:
            return Decision.from_record(json.loads(recorded))
        convo = self.conversations.load(openid)
        decision = self.responder.decide(message, convo)
        pipe = self.redis.pipeline(transaction=True)
        self.conversations.save(convo, client=pipe)
        pipe.hset(key, "decision", json.dumps(decision.to_record(), ensure_ascii=False))
        pipe.expire(key, defaults.IDEMPOTENCY_TTL)
        pipe.execute()
        return decision

    def _escalated(self, inbound, decision):
        """Tell the shopper a human is coming, and the agents that someone waits."""
        openid = inbound["openid"]
        kb = self.svc.knowledge.get()
        self.sender.deliver(inbound["id"], openid, [kb.escalation_reply])
        self.svc.handoffs.log(openid, "bot", kb.escalation_reply, once=inbound["id"], source="escalate")
        notify_robot(self.cfg.robot_webhook, openid, decision.reason, Message.from_inbound(inbound).text)
        return Decision(Action.ESCALATE, kb.escalation_reply, source="escalate", reason=decision.reason,
                        priority=decision.priority)

    def handle(self, shard, entry_id, inbound):
        started = time.time()
        intent = decision = None
        try:
            decision = self.process(inbound)
            intent = decision.intent
            outcome = decision.source
            if decision.action == Action.ESCALATE:
                log.info("escalation push=%s openid=%s reason=%s priority=%d", inbound["id"], inbound["openid"],
                         decision.reason, decision.priority)
        except WeChatError as exc:
            outcome = "send_failed"  # kept in the undelivered stream by the sender
            log.error("push %s: reply not sent: %s", inbound["id"], exc)
        except redis_lib.RedisError:
            raise  # not acknowledged: retried when Redis is back
        except Exception:
            outcome = "error"
            log.exception("push %s: unexpected error; message kept in the undelivered stream", inbound["id"])
            self.redis.xadd(keys.UNDELIVERED, {"push_id": inbound["id"], "openid": inbound["openid"],
                                               "reason": "worker_error", "texts": "[]", "at": int(started)})
        self.inbox.ack(shard, entry_id)
        self.svc.metrics.inc("wxkf_jobs_total", outcome=outcome)
        self._statistics(inbound, outcome, decision if outcome not in ("send_failed", "error") else None)
        self.svc.metrics.observe("wxkf_job_seconds", max(0.0, time.time() - inbound.get("received_at", started)))
        log.info("job push=%s openid=%s type=%s outcome=%s intent=%s in %.0f ms", inbound["id"], inbound["openid"],
                 inbound["event"] or inbound["type"], outcome, intent, (time.time() - started) * 1000)

    def _statistics(self, inbound, outcome, decision):
        """Daily counts by source for the console's statistics page, escalations by reason, and the
        questions the bot could not answer."""
        if outcome not in ("knowledge", "generated", "suggest", "fallback", "escalate"):
            return
        pipe = self.redis.pipeline(transaction=False)
        day = keys.stats_day(int(time.time() // 86400))
        pipe.hincrby(day, outcome, 1)
        pipe.expire(day, 40 * 86400)
        if outcome == "escalate" and decision is not None:
            pipe.hincrby(keys.STATS_TOTAL, f"reason:{decision.reason}", 1)
        text = inbound["fields"].get("Content", "").strip()
        if outcome in ("fallback", "suggest") and text:
            pipe.zincrby(keys.UNANSWERED, 1, text[:60])
        pipe.execute()

    def run_once(self, block_ms=1000):
        """One round: agents' replies queued by the console, then pending entries of newly owned
        shards, then new entries; stops between entries once asked to. Returns the number of pushes
        handled."""
        self.outbox.drain(self.name)
        with self._lock:
            owned, fresh = sorted(self.owned), sorted(self.fresh)
            self.fresh.clear()
        entries = self.inbox.read(fresh, self.name, pending=True, count=10_000) if fresh else []
        if not entries:
            entries = self.inbox.read(owned, self.name, block_ms=block_ms)
        handled = 0
        for shard, entry_id, inbound in entries:
            if self._stop.is_set():
                break  # stopping: what was read and not started stays pending for the next owner
            if shard in self.owned:
                self.handle(shard, entry_id, inbound)
                handled += 1
        return handled

    def failing_for(self):
        """Seconds the main loop has been failing on Redis errors (0 when it works)."""
        return 0.0 if self._failing_since is None else time.monotonic() - self._failing_since

    def step(self):
        """One round of the loop; after a Redis error, None (the caller waits a little)."""
        try:
            self.sender.record_pending()  # sends Redis missed while it was away, before anything is re-read
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
        with self._lock:
            self.fresh |= self.owned
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
        log.info("worker %s started, %d shards", self.name, len(self.owned))
        while not self._stop.is_set():
            if self.step() is None:
                self._stop.wait(1)
        try:
            with self._lock:
                for shard in self.owned:
                    self.inbox.release_lease(shard, self.name)
            ops.gone(self.redis, self.name)
        except redis_lib.RedisError as exc:
            log.warning("could not release shard leases (%s); they expire in %ss", exc, self.cfg.lease_seconds)
        log.info("worker %s stopped", self.name)

    def stop(self, *_):
        self._stop.set()


def build_responder(cfg):
    """The dialogue engine over the knowledge folder; the model is loaded here, once per process."""
    from .dialogue.engine import build_engine
    return build_engine(cfg.knowledge_dir, cfg.model_path, model_scoring=cfg.model_scoring,
                        model_escalation=cfg.model_escalation,
                        generation=cfg.generation, budget_seconds=cfg.understanding_budget,
                        generation_budget=cfg.generation_budget, max_reply_chars=cfg.max_reply_chars,
                        background_reload=True, snapshot=cfg.var_path / "knowledge-last-good.json")


def notify_robot(url, openid, reason, text):
    """Best effort: a WeCom group-robot message for each new escalation (no shopper text above DEBUG)."""
    if not url:
        return
    import requests
    content = f"**新的转人工**\n> 原因：{reason}\n> 顾客：{openid}\n> 消息：{text[:60]}"
    try:
        requests.post(url, json={"msgtype": "markdown", "markdown": {"content": content}}, timeout=2)
    except requests.RequestException as exc:
        log.warning("robot notification failed: %s", type(exc).__name__)


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


def main(svc):
    from .errors import KnowledgeError
    wait_for_redis(svc.redis)
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
