"""Configuration: built-in defaults, then a TOML file, then `WXKF_<KEY>` environment variables.

This is the only module that reads the environment. `load()` raises one ConfigError naming every
missing or invalid key, so an operator fixes them all in one go.
"""
import base64
import binascii
import dataclasses
import os
import re
import tomllib
from pathlib import Path

from . import defaults
from .errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Config:
    token: str = ""
    aes_key: str = ""
    appid: str = ""
    secret: str = ""
    corpid: str = ""
    kf_secret: str = ""
    kf_token: str = ""
    kf_aes_key: str = ""
    kf_handoff: str = "pool"
    kf_servicer: str = ""
    redis_url: str = ""
    redis_replicas: int = 0
    api_base: str = "https://api.weixin.qq.com"
    wecom_api_base: str = "https://qyapi.weixin.qq.com"
    knowledge: str = "knowledge"
    model: str = ""
    model_gpu_layers: int = 0
    bind: str = "127.0.0.1:8000"
    var_dir: str = "var"
    web_workers: int = 4
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    timestamp_window: int = defaults.TIMESTAMP_WINDOW
    plaintext_pushes: bool = False
    ops_token: str = ""
    trusted_proxies: int = 0
    dedup_ttl: int = defaults.DEDUP_TTL
    inbox_shards: int = defaults.INBOX_SHARDS
    lease_seconds: float = defaults.LEASE_SECONDS
    heartbeat_seconds: float = defaults.HEARTBEAT_SECONDS
    worker_nice: int = 10
    worker_idle: bool = True
    typing: bool = True
    model_scoring: bool = True
    model_escalation: bool = True
    understanding_budget: float = 0.8
    generation: bool = False
    generation_budget: float = 1.5
    max_reply_chars: int = 50
    sandbox: bool = False
    sandbox_bind: str = "127.0.0.1:8001"
    live_bind: str = "127.0.0.1:8002"
    live_threads: int = 64
    live_url: str = ""
    api_wait: float = 10.0
    api_chat_per_minute: int = 20
    log_level: str = "INFO"
    kf_account: str = ""
    handoff_seconds: int = 1800
    robot_webhook: str = ""
    console_secret: str = ""
    console_https: bool = False

    def path(self, value):
        """A path from the config, relative paths taken from the project root."""
        p = Path(value)
        return p if p.is_absolute() else ROOT / p

    @property
    def knowledge_dir(self):
        return self.path(self.knowledge)

    @property
    def var_path(self):
        return self.path(self.var_dir)

    @property
    def model_path(self):
        if self.model:
            return self.path(self.model)
        return self.var_path / "models" / "gemma-3-270m-q4_k_m.gguf"

    @property
    def wecom_enabled(self):
        """The WeCom 微信客服 channel is on when its four credentials are set."""
        return bool(self.corpid and self.kf_secret and self.kf_token and self.kf_aes_key)

    @property
    def embedded_redis_url(self):
        return f"unix://{self.var_path / 'redis.sock'}"

    @property
    def effective_redis_url(self):
        return self.redis_url or self.embedded_redis_url

    def describe(self):
        """The config without secrets, for logs and `wxkf config`."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in SECRET_KEYS and v:
                v = "***"
            out[f.name] = v
        return out


DEMO = {"token": "wxkfdemotoken", "aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "appid": "wxdemo0000000000", "secret": "demosecret",
        "corpid": "wwdemo0000000000", "kf_secret": "demokfsecret", "kf_token": "wxkfdemokftoken",
        "kf_aes_key": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq"}
"""The demo credentials published in conf/wxkf.toml: only ever valid against the local sandbox."""

WECOM_KEYS = ("corpid", "kf_secret", "kf_token", "kf_aes_key")

ZERO_OK = {"trusted_proxies", "redis_replicas", "worker_nice", "model_gpu_layers"}
"""Numeric keys for which 0 is meaningful."""

ALL_OK = {"model_gpu_layers": -1}
"""Numeric keys for which this negative value means "all" (llama.cpp's n_gpu_layers = -1)."""

SECRET_KEYS = {"ops_token", "token", "aes_key", "secret", "kf_secret", "kf_token", "kf_aes_key", "console_secret"}
FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name, raw, problems):
    kind = FIELDS[name].type
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off", ""):
            return False
        problems.append(f"{name}: expected true or false, got {raw!r}")
        return None
    if kind in (int, float):
        try:
            value = int(raw) if kind is int else float(raw)
        except (TypeError, ValueError):
            problems.append(f"{name}: expected a number, got {raw!r}")
            return None
        if value == ALL_OK.get(name):
            return value
        if value < 0 or (value == 0 and name not in ZERO_OK):
            problems.append(f"{name}: must be positive, got {raw!r}")
            return None
        return value
    if not isinstance(raw, (str, int, float)):
        problems.append(f"{name}: expected text, got {type(raw).__name__}")
        return None
    return str(raw)


def _valid_aes_key(key):
    if not re.fullmatch(r"[A-Za-z0-9]{43}", key):
        return False
    try:
        return len(base64.b64decode(key + "=")) == 32
    except binascii.Error:
        return False


def _validate(cfg, problems):
    if not cfg.sandbox:
        for key, demo in DEMO.items():
            if getattr(cfg, key) == demo:
                extra = " or remove the four WeCom keys (channel off)" if key in WECOM_KEYS else ""
                problems.append(f"{key}: still the demo value published with wxkf; with sandbox = false set "
                                f"your own{extra} (anyone could sign pushes with the published one)")
    if not re.fullmatch(r"[A-Za-z0-9]{3,32}", cfg.token):
        problems.append("token: must be 3-32 letters or digits (as the WeChat console requires)")
    if not _valid_aes_key(cfg.aes_key):
        problems.append("aes_key: must be the 43-character EncodingAESKey from the WeChat console")
    if not cfg.appid:
        problems.append("appid: required (the Mini Program or Official Account AppID)")
    if not cfg.secret:
        problems.append("secret: required (the AppSecret)")
    for key in ("api_base", "wecom_api_base"):
        if not re.match(r"https?://[^/]+", getattr(cfg, key)):
            problems.append(f"{key}: must be an http(s) URL")
    if cfg.redis_url and not re.match(r"(redis|rediss|unix|redis\+sentinel|rediss?\+cluster)://", cfg.redis_url):
        problems.append("redis_url: must start with redis://, rediss://, unix://, redis+sentinel:// or "
                        "redis+cluster://")
    elif re.match(r"rediss?\+cluster://", cfg.redis_url):
        if not re.fullmatch(r"rediss?\+cluster://([^@/]*@)?[^/@,]+:\d+(,[^/@,]+:\d+)*/?", cfg.redis_url):
            problems.append("redis_url: a cluster URL is redis+cluster://[:password@]host1:7000,host2:7001 "
                            "(no database number: a cluster has only database 0)")
    elif cfg.redis_url.startswith("redis+sentinel://") and not re.fullmatch(
            r"redis\+sentinel://([^@/]*@)?[^/@]+:\d+(,[^/@,]+:\d+)*/[A-Za-z0-9_.-]+(/\d+)?/?(\?.*)?", cfg.redis_url):
        problems.append("redis_url: a Sentinel URL is redis+sentinel://[:password@]host1:26379,host2:26379/MASTER[/DB]")
    for key in ("bind", "sandbox_bind", "live_bind"):
        if not re.fullmatch(r"[^\s:]+:\d{1,5}", getattr(cfg, key)):
            problems.append(f"{key}: must be HOST:PORT")
    if cfg.live_url and not re.fullmatch(r"https?://[^/\s]+/?", cfg.live_url):
        problems.append("live_url: the live process's address as browsers reach it, e.g. https://kf.example.com "
                        "(empty: the console's host at live_bind's port, or the console's own address behind a proxy)")
    _validate_wecom(cfg, problems)
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append("log_level: one of DEBUG, INFO, WARNING, ERROR")


def _validate_wecom(cfg, problems):
    wecom = {"corpid": cfg.corpid, "kf_secret": cfg.kf_secret, "kf_token": cfg.kf_token, "kf_aes_key": cfg.kf_aes_key}
    if any(wecom.values()) and not all(wecom.values()):
        missing = ", ".join(k for k, v in wecom.items() if not v)
        problems.append(f"{missing}: the WeCom 微信客服 channel needs corpid, kf_secret, kf_token and kf_aes_key "
                        f"together (unset all four to switch it off)")
    if cfg.corpid and not re.fullmatch(r"[A-Za-z0-9]{1,64}", cfg.corpid):
        problems.append("corpid: must be the CorpID from WeCom's admin console (我的企业 → 企业ID)")
    if cfg.kf_token and not re.fullmatch(r"[A-Za-z0-9]{1,32}", cfg.kf_token):
        problems.append("kf_token: must be 1-32 letters or digits (as WeCom's callback settings require)")
    if cfg.kf_aes_key and not _valid_aes_key(cfg.kf_aes_key):
        problems.append("kf_aes_key: must be the 43-character EncodingAESKey")
    if cfg.kf_handoff not in ("pool", "servicer", "console"):
        problems.append("kf_handoff: one of pool (WeCom's waiting pool), servicer (kf_servicer takes it), "
                        "console (agents answer in the wxkf console)")
    elif cfg.kf_handoff == "servicer" and not cfg.kf_servicer:
        problems.append("kf_servicer: required with kf_handoff = \"servicer\" (the servicer's WeCom userid)")


def load(path=None, env=None, **overrides):
    """Build the Config; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems = []
    values = {}
    path = path or env.get("WXKF_CONFIG")
    if path is None and (ROOT / "conf" / "wxkf.toml").exists():
        path = ROOT / "conf" / "wxkf.toml"
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([f"config file not found: {path}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: {exc}"]) from None
        for name, raw in data.items():
            if name not in FIELDS:
                problems.append(f"{name}: unknown key in {path}")
                continue
            values[name] = raw
    for name in FIELDS:
        env_name = "WXKF_" + name.upper()
        if env_name in env:
            values[name] = env[env_name]
    values.update(overrides)
    clean = {}
    for name, raw in values.items():
        value = _coerce(name, raw, problems)
        if value is not None:
            clean[name] = value
    cfg = Config(**clean)
    _validate(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg
