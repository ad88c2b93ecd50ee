"""Agent and admin accounts, login throttling and the audit log, all in Redis."""
import json
import re
import time
from enum import Enum

from werkzeug.security import check_password_hash, generate_password_hash

from .. import keys
from ..errors import WxkfError

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{2,32}")
MAX_FAILURES = 5
"""Failed logins per account and address before a 15-minute lock."""
LOCK_SECONDS = 15 * 60


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
            raise AccountError("name: 2-32 letters, digits, '.', '_' or '-'")
        role = Role(role)
        if len(password or "") < 8:
            raise AccountError("password: at least 8 characters")
        created = self.redis.hsetnx(keys.user(name), "role", role.value)
        if not created:
            raise AccountError(f"user {name!r} exists")
        self.redis.hset(keys.user(name), mapping={"pw": generate_password_hash(password), "created": int(self.clock())})
        return role

    def get(self, name):
        data = self.redis.hgetall(keys.user(name)) if NAME_RE.fullmatch(name or "") else {}
        return {"name": name, "role": data["role"]} if data.get("role") else None

    def locked(self, name, address):
        return int(self.redis.get(keys.login_failures(name, address)) or 0) >= MAX_FAILURES

    def login(self, name, password, address):
        """The account when the password is right; None otherwise (and the failure is counted)."""
        if self.locked(name, address):
            return None
        data = self.redis.hgetall(keys.user(name)) if NAME_RE.fullmatch(name or "") else {}
        if data.get("pw") and check_password_hash(data["pw"], password or ""):
            self.redis.delete(keys.login_failures(name, address))
            return {"name": name, "role": data["role"]}
        pipe = self.redis.pipeline()
        pipe.incr(keys.login_failures(name, address))
        pipe.expire(keys.login_failures(name, address), LOCK_SECONDS)
        pipe.execute()
        return None

    def audit(self, who, action, target="", **detail):
        self.redis.xadd(keys.AUDIT, {"who": who, "action": action, "target": target, "at": int(self.clock()),
                                     "detail": json.dumps(detail, ensure_ascii=False)},
                        maxlen=100_000, approximate=True)

    def audit_log(self, count=100):
        return [dict(f, id=i) for i, f in self.redis.xrevrange(keys.AUDIT, count=count)]
