"""One inbound push, handled: window bookkeeping, handoff, typing, the decision, the reply.

Called by the worker loop (`wxkf.worker`) for each entry it reads. The decision for a push is made
once and stored with the conversation; the reply is sent once (the Sender's record), so a push
delivered again after a crash or a Redis outage repeats nothing the shopper already has.
"""
import json
import logging
import time

import redis as redis_lib

from . import defaults, keys
from .dialogue.decision import Action, Decision, Message
from .errors import SessionNotOurs, WeChatError
from .wechat.push import MESSAGE_TYPES

log = logging.getLogger("wxkf.worker")


class Dispatcher:
    def __init__(self, svc, responder, conversations=None):
        from .dialogue.conversation import ConversationStore
        self.svc = svc
        self.cfg = svc.config
        self.redis = svc.redis
        self.inbox = svc.inbox
        self.sender = svc.sender
        self.responder = responder
        self.conversations = conversations or ConversationStore(svc.redis)

    def process(self, inbound):
        """Handle one push: window bookkeeping, handoff, typing, decision, reply. Returns the Decision."""
        openid, push_id = inbound["openid"], inbound["id"]
        kind = inbound["type"]
        if inbound.get("channel") == "page":
            return self._page(inbound)
        wecom = inbound.get("channel") == "wecom"
        sender = self.svc.kf.sender if wecom else self.sender
        # A customer's message of any type opens WeCom's window; MP/OA windows open for the push types.
        customer = (kind != "event" and inbound.get("origin") == 3) if wecom else kind in MESSAGE_TYPES
        if customer:
            sender.open_window(openid, "message", inbound["create_time"], push_id)
        elif inbound["event"]:
            sender.open_window(openid, inbound["event"], inbound["create_time"], push_id)
        message = Message.from_inbound(inbound)
        handoffs = self.svc.handoffs
        if wecom:
            handled = self.svc.kf.handle(inbound, self.responder.store.get())
            if handled is not None:
                source, text = handled
                return Decision(Action.REPLY if text else Action.SILENT, text, source=source)
        if inbound["event"] in ("kf_create_session", "kf_switch_session"):
            handoffs.touch(openid, agent=inbound["fields"].get("KfAccount") or inbound["fields"].get("ToKfAccount"),
                           claim=True)
            return Decision(Action.SILENT, source="silent")
        if inbound["event"] == "kf_close_session":
            handoffs.end(openid, f"微信客服 {inbound['fields'].get('KfAccount', '')} 结束了会话")
            return Decision(Action.SILENT, source="silent")
        if customer:
            handoffs.log(openid, "shopper", message.text or f"[{kind}]", once=push_id, push=push_id)
            if not wecom:
                self.svc.page.left(openid)  # wrote through the contact button: agents answer there
        if inbound.get("started"):
            # The webhook escalated and answered WeChat with transfer_customer_service.
            state = handoffs.get(openid) or {}
            handoffs.announce(openid, state.get("reason", ""), once=push_id)
            return self._escalated(inbound, Decision(Action.ESCALATE, source="escalate", reason=state.get("reason"),
                                                     priority=int(state.get("priority", 0))))
        if wecom:
            unfinished = self._unfinished_escalation(push_id)
            if unfinished is not None:  # decided to escalate, then interrupted before WeCom was told
                handoffs.start(openid, unfinished.reason or "request", unfinished.priority, via="worker")
                return self._escalated(inbound, unfinished)
        # A human has this conversation. WeCom's session state, per account, was checked above
        # (`kf.handle`); the queue-time `held` is not used for WeCom: a pulled message is queued before
        # the events of its page (a session ended) are handled.
        if (handoffs.held(openid) and (not wecom or self.svc.kf.console_desk(openid))) \
                or (inbound.get("held") and not wecom):
            return Decision(Action.SILENT, source="human")
        if (message.kind == "text" and time.time() - inbound["create_time"] < defaults.TYPING_WINDOW
                and not self.redis.hexists(keys.sent(push_id), "plan")):
            sender.typing(openid)
        decision = self._decide_once(push_id, openid, message)
        if decision.action == Action.ESCALATE:
            handoffs.start(openid, decision.reason or "request", decision.priority, via="worker")
            return self._escalated(inbound, decision)
        if decision.action != Action.SILENT and decision.text:
            try:
                sender.deliver(push_id, openid, [decision.text])
            except SessionNotOurs:
                # WeCom: a servicer took the session (or it ended) since we last heard; say nothing.
                self.svc.kf.session_lost(openid, inbound["to"])
                return Decision(Action.SILENT, source="human")
            if wecom:
                self.svc.kf.answered(openid, inbound["to"])
            handoffs.log(openid, "bot", decision.text, once=push_id, source=decision.source, intent=decision.intent)
        return decision

    def _page(self, inbound):
        """A message from the Mini Program's own chat page (`wxkf.page`): the same conversation,
        engine, escalation and console; the result goes to the shopper's mailbox, where `/api/chat`
        waits for it, even when the bot stays silent because a human holds the chat."""
        openid, push_id = inbound["openid"], inbound["id"]
        page, handoffs = self.svc.page, self.svc.handoffs
        message = Message.from_inbound(inbound)
        handoffs.log(openid, "shopper", message.text, once=push_id, push=push_id, channel="page")
        if handoffs.held(openid):
            page.reply(push_id, openid, None, source="human", escalated=True)
            return Decision(Action.SILENT, source="human")
        decision = self._decide_once(push_id, openid, message)
        kb = self.responder.store.get()
        if decision.action == Action.ESCALATE:
            handoffs.start(openid, decision.reason or "request", decision.priority, via="page")
            text = decision.text or kb.escalation_text()
            handoffs.log(openid, "bot", text, once=push_id, source="escalate")  # the console first, then the page
            page.reply(push_id, openid, text, source="escalate", escalated=True)
            notify_robot(self.cfg.robot_webhook, openid, decision.reason, message.text)
            return Decision(Action.ESCALATE, text, source="escalate", reason=decision.reason,
                            priority=decision.priority)
        text = decision.text if decision.action != Action.SILENT else None
        titles = [kb.intent(i).title for i in decision.suggestions if kb.intent(i) is not None]
        if text:
            handoffs.log(openid, "bot", text, once=push_id, source=decision.source, intent=decision.intent)
        page.reply(push_id, openid, text, source=decision.source, suggestions=titles, intent=decision.intent)
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
        kb = self.responder.store.get()  # the store the engine answers from
        promise = decision.text if decision.text else kb.escalation_text()  # decided once, kept on redelivery
        if inbound.get("channel") == "wecom":
            self.svc.kf.escalate(inbound, promise)
        else:
            self.sender.deliver(inbound["id"], openid, [promise])
            self.svc.handoffs.log(openid, "bot", promise, once=inbound["id"], source="escalate")
        notify_robot(self.cfg.robot_webhook, openid, decision.reason, Message.from_inbound(inbound).text)
        return Decision(Action.ESCALATE, promise, source="escalate", reason=decision.reason,
                        priority=decision.priority)

    def _unfinished_escalation(self, push_id):
        """The recorded escalation of a WeCom message whose transfer did not finish (the worker died or
        Redis went away in between), else None."""
        recorded = self.redis.hmget(keys.sent(push_id), "decision", "transferred")
        if recorded[0] is None or recorded[1] is not None:
            return None
        decision = Decision.from_record(json.loads(recorded[0]))
        return decision if decision.action == Action.ESCALATE else None

    def handle(self, shard, entry_id, inbound):
        """Process one entry and acknowledge it; a RedisError leaves it unacknowledged (read again)."""
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


