"""WeCom's API with one shared access token (protocol ref. 4, WeCom token).

The same single-flight token handling as the Mini Program API (`wxkf.wechat.api`): one process
fetches, under a Redis lock, the others read the token from Redis; an invalid token is refreshed once
and the call retried once. Only the fetch differs: `GET cgi-bin/gettoken?corpid=&corpsecret=`, one
token per (CorpID, secret), which WeCom asks callers not to fetch often.
"""
import hashlib
import logging

from .. import defaults, keys
from ..errors import api_error
from ..wechat.api import WeChatAPI

log = logging.getLogger("wxkf.wecom")


class WeComAPI(WeChatAPI):
    def __init__(self, redis, api_base, corpid, secret, metrics=None, http=None, timeout=defaults.HTTP_TIMEOUT):
        # The token belongs to the (CorpID, secret) pair: another app's secret has its own token.
        name = f"wecom-{corpid}-{hashlib.sha1(secret.encode()).hexdigest()[:10]}"
        super().__init__(redis, api_base, name, secret, metrics=metrics, http=http, timeout=timeout)
        self.corpid = corpid

    def _fetch(self, force):
        data = self._http("GET", "/cgi-bin/gettoken", params={"corpid": self.corpid, "corpsecret": self._secret})
        if data.get("errcode"):
            raise api_error(data["errcode"], data.get("errmsg", ""), "gettoken")
        token, expires_in = data["access_token"], int(data.get("expires_in", 7200))
        ttl = max(30, expires_in - defaults.TOKEN_MARGIN)
        self.redis.set(keys.token(self.appid), token, ex=ttl)
        if self.metrics:
            self.metrics.inc("wxkf_token_refreshes_total")
        log.info("WeCom access token refreshed corpid=%s ttl=%ss", self.corpid, ttl)
        return token
