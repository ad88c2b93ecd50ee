"""The long-lived objects a process builds once from config: Redis, crypto, inbox, metrics, sender."""
import logging
import time

from . import config as config_mod
from .inbox import Inbox
from .metrics import Metrics
from .store import connect
from .wechat.crypto import PushCrypto


class Services:
    def __init__(self, cfg=None, redis=None):
        self.config = cfg or config_mod.load()
        self.redis = redis or connect(self.config.effective_redis_url)
        self.crypto = PushCrypto(self.config.token, self.config.aes_key, self.config.appid)
        self.inbox = Inbox(self.redis, shards=self.config.inbox_shards, dedup_ttl=self.config.dedup_ttl)
        self.metrics = Metrics(self.redis)
        self._sender = None
        self._knowledge = None
        self._handoffs = None
        self._outbox = None

    @property
    def knowledge(self):
        if self._knowledge is None:
            from .dialogue.knowledge import KnowledgeStore
            self._knowledge = KnowledgeStore(self.config.knowledge_dir,
                                             snapshot=self.config.var_path / "knowledge-last-good.json")
        return self._knowledge

    @property
    def handoffs(self):
        if self._handoffs is None:
            from .agents.handoff import Handoffs
            self._handoffs = Handoffs(self.redis, hold_seconds=self.config.handoff_seconds)
        return self._handoffs

    @property
    def outbox(self):
        if self._outbox is None:
            from .agents.outbox import Outbox
            self._outbox = Outbox(self.redis, self.sender, self.handoffs, self.metrics)
        return self._outbox

    @property
    def sender(self):
        if self._sender is None:
            from .wechat.sender import Sender
            self._sender = Sender.from_services(self)
        return self._sender


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
