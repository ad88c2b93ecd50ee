"""The long-lived objects of a process, built once at start-up from config."""
import logging
import time

from redis import RedisError

from . import config as config_mod
from .agents.handoff import Handoffs
from .agents.outbox import Outbox
from .inbox import Inbox
from .metrics import Metrics
from .store import connect, migrate_keys
from .wechat.api import WeChatAPI
from .wechat.crypto import PushCrypto
from .wechat.sender import Sender


class Services:
    """Every long-lived object a process shares, built here once and given to each other explicitly.

    The knowledge store alone is built on first use: a knowledge base that is broken, with no good
    version remembered, must not keep the webhook and the console from starting (the console says
    what is wrong). The worker answers from its dialogue engine's own store."""

    def __init__(self, cfg=None, redis=None):
        cfg = self.config = cfg or config_mod.load()
        self.redis = redis or connect(cfg.effective_redis_url)
        try:
            migrate_keys(self.redis)
        except RedisError as exc:  # Redis down at start: the webhook still starts (and answers 503)
            logging.getLogger("wxkf").warning("could not check Redis for keys to migrate: %s", exc)
        self.crypto = PushCrypto(cfg.token, cfg.aes_key, cfg.appid)
        self.inbox = Inbox(self.redis, shards=cfg.inbox_shards, dedup_ttl=cfg.dedup_ttl, replicas=cfg.redis_replicas)
        self.metrics = Metrics(self.redis)
        self.handoffs = Handoffs(self.redis, hold_seconds=cfg.handoff_seconds)
        api = WeChatAPI(self.redis, cfg.api_base, cfg.appid, cfg.secret, metrics=self.metrics)
        self.sender = Sender(self.redis, api, self.metrics, typing=cfg.typing, replicas=cfg.redis_replicas)
        self.kf = self.kf_crypto = None
        if cfg.wecom_enabled:
            from .wecom.kf import KfChannel
            self.kf = KfChannel(self.redis, cfg, self.inbox, self.metrics, self.handoffs)
            self.kf_crypto = PushCrypto(cfg.kf_token, cfg.kf_aes_key, cfg.corpid)
        from .page import PageSender
        self.page = PageSender(self.redis)
        self.outbox = Outbox(self.redis, self.sender_for, self.handoffs, self.metrics)
        self._knowledge = None

    def sender_for(self, openid):
        """The sender of the channel a conversation came from: WeCom 微信客服 customers are known by
        the account they talk to (`keys.kf_user`); a shopper who last wrote from the Mini Program's own
        chat page is answered there (`wxkf.page`); everyone else through WeChat's send API."""
        return {"wecom": self.kf.sender if self.kf else None, "page": self.page}.get(self.channel_of(openid),
                                                                                     self.sender)

    def channel_of(self, openid):
        if self.kf is not None and self.kf.is_wecom(openid):
            return "wecom"
        return "page" if self.page.is_page(openid) else "wechat"

    @property
    def knowledge(self):
        if self._knowledge is None:
            from .dialogue.knowledge import KnowledgeStore
            self._knowledge = KnowledgeStore(self.config.knowledge_dir,
                                             snapshot=self.config.var_path / "knowledge-last-good.json")
        return self._knowledge

    def reload_knowledge(self):
        """Forget the knowledge store (as a restart would): the next use loads the folder again."""
        self._knowledge = None


class _Formatter(logging.Formatter):
    """The standard format, with the timestamp text computed once per second (the webhook logs every push)."""

    _second = None
    _text = ""

    def formatTime(self, record, datefmt=None):
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._text},{int(record.msecs):03d}"


def setup_logging(level="INFO"):
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = True
