"""Agent and admin accounts, login throttling and the audit log, all in Redis."""
import hashlib
import json
import re
import secrets
import time
from enum import Enum

from werkzeug.security import check_password_hash, generate_password_hash

from .. import keys
from ..errors import WxkfError

NAME_RE = re.compile(r"[\w.-]{2,32}")
"""Account names: 2-32 letters (Chinese included), digits, '.', '_' or '-'; no spaces or controls."""
MAX_FAILURES = 5
"""Failed logins per account and address before a 15-minute lock."""
LOCK_SECONDS = 15 * 60
SESSION_SECONDS = 12 * 3600
"""How long a console login lasts; logout ends it at once (the session id is revoked server-side)."""

# Checked against when the name is unknown, so the response time does not tell which names exist.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


def _name_digest(name):
    return hashlib.sha256(str(name).encode("utf-8", "replace")).hexdigest()[:32]


def _failures_key(name, address):
    """Fixed-size key whatever the typed name: a 400 KB name must not become a 400 KB key."""
    digest = hashlib.sha256(f"{name}\0{address}".encode("utf-8", "replace")).hexdigest()[:32]
    return keys.login_failures(digest)


class Role(str, Enum):
    AGENT = "agent"
    ADMIN = "admin"


class AccountError(WxkfError):
    pass


class Accounts:
    def __init__(self, redis, clock=time.time):
        self.redis = redis
        self.clock = clock

    def add(self, name, role, password):
        if not NAME_RE.fullmatch(name or ""):
            raise AccountError("name: 2-32 letters (Chinese too), digits, '.', '_' or '-'")
        role = Role(role)
        if len(password or "") < 8:
            raise AccountError("password: at least 8 characters")
        created = self.redis.hsetnx(keys.user(name), "role", role.value)
        if not created:
            raise AccountError(f"user {name!r} exists")
        self.redis.hset(keys.user(name), mapping={"pw": generate_password_hash(password), "created": int(self.clock())})
        return role

    def get(self, name):
        """The account, or None when it does not exist or is disabled."""
        data = self.redis.hgetall(keys.user(name)) if NAME_RE.fullmatch(name or "") else {}
        return {"name": name, "role": data["role"]} if data.get("role") and not data.get("disabled") else None

    def _existing(self, name):
        if not NAME_RE.fullmatch(name or "") or not self.redis.hexists(keys.user(name), "role"):
            raise AccountError(f"no user {name!r}")

    def list(self):
        """Every account: name, role, created, disabled, sorted by name."""
        out = []
        prefix = keys.user("")
        for key in self.redis.scan_iter(match=prefix + "*", count=500):
            data = self.redis.hgetall(key)
            if data.get("role"):
                out.append({"name": key[len(prefix):], "role": data["role"], "created": int(data.get("created", 0)),
                            "disabled": bool(data.get("disabled"))})
        return sorted(out, key=lambda u: u["name"])

    def set_password(self, name, password):
        """A new password; every open console login of the account is ended."""
        self._existing(name)
        if len(password or "") < 8:
            raise AccountError("password: at least 8 characters")
        self.redis.hset(keys.user(name), "pw", generate_password_hash(password))
        self.revoke_sessions(name)

    def disable(self, name, disabled=True):
        """A disabled account cannot log in, and its open logins end at once."""
        self._existing(name)
        if disabled:
            self.redis.hset(keys.user(name), "disabled", int(self.clock()))
            self.revoke_sessions(name)
        else:
            self.redis.hdel(keys.user(name), "disabled")

    def delete(self, name):
        self._existing(name)
        self.revoke_sessions(name)
        self.redis.delete(keys.user(name))

    def unlock(self, name):
        """Clear the failed-login lock of `name` from every address. Returns the locks cleared."""
        index = keys.login_failure_index(_name_digest(name))
        locks = self.redis.smembers(index)
        lifted = sum(1 for k in locks if int(self.redis.get(k) or 0) >= MAX_FAILURES)
        if locks:
            self.redis.delete(*locks)
        self.redis.delete(index)
        return lifted

    def revoke_sessions(self, name):
        index = keys.user_sessions(name)
        sids = self.redis.smembers(index)
        if sids:
            self.redis.delete(*[keys.console_session(s) for s in sids])
        self.redis.delete(index)

    def locked(self, name, address):
        return int(self.redis.get(_failures_key(name, address)) or 0) >= MAX_FAILURES

    def login(self, name, password, address):
        """The account when the password is right; None otherwise.

        Each attempt is counted before the password is checked (INCR, atomic), so parallel tries
        cannot slip past the limit; a success clears the count. Unknown names are checked against a
        dummy hash, so timing does not reveal which names exist."""
        key = _failures_key(name, address)
        index = keys.login_failure_index(_name_digest(name))
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, LOCK_SECONDS)
        pipe.sadd(index, key)  # so that `wxkf user unlock` can find the locks of a name
        pipe.expire(index, LOCK_SECONDS)
        attempts = pipe.execute()[0]
        if attempts > MAX_FAILURES:
            return None
        data = self.redis.hgetall(keys.user(name)) if NAME_RE.fullmatch(name or "") else {}
        ok = check_password_hash(data.get("pw") or _DUMMY_HASH, (password or "")[:1024])
        if ok and data.get("pw") and not data.get("disabled"):
            self.redis.delete(key)
            return {"name": name, "role": data["role"]}
        return None

    def open_session(self, name):
        """A server-side session id for `name`: the cookie carries it, logout revokes it."""
        sid = secrets.token_urlsafe(24)
        pipe = self.redis.pipeline()
        pipe.set(keys.console_session(sid), name, ex=SESSION_SECONDS)
        pipe.sadd(keys.user_sessions(name), sid)
        pipe.expire(keys.user_sessions(name), SESSION_SECONDS)
        pipe.execute()
        return sid

    def session_user(self, sid):
        return self.redis.get(keys.console_session(sid)) if sid else None

    def close_session(self, sid):
        if sid:
            pipe = self.redis.pipeline()
            pipe.get(keys.console_session(sid))
            pipe.delete(keys.console_session(sid))
            name = pipe.execute()[0]
            if name:
                self.redis.srem(keys.user_sessions(name), sid)

    def audit(self, who, action, target="", **detail):
        self.redis.xadd(keys.AUDIT, {"who": who, "action": action, "target": target, "at": int(self.clock()),
                                     "detail": json.dumps(detail, ensure_ascii=False)},
                        maxlen=100_000, approximate=True)

    def audit_log(self, count=100):
        return [dict(f, id=i) for i, f in self.redis.xrevrange(keys.AUDIT, count=count)]
