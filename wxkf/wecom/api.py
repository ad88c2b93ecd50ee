"""WeCom's API with one shared access token (protocol ref. 4, WeCom token).

The same single-flight token handling as the Mini Program API (`wxkf.wechat.api`): one process
fetches, under a Redis lock, the others read the token from Redis; an invalid token is refreshed once
and the call retried once. Only the fetch differs: `GET cgi-bin/gettoken?corpid=&corpsecret=`, one
token per (CorpID, secret), which WeCom asks callers not to fetch often.
"""
import hashlib

from .. import defaults
from ..wechat.api import WeChatAPI


class WeComAPI(WeChatAPI):
    TOKEN_API = "gettoken"

    def __init__(self, redis, api_base, corpid, secret, metrics=None, http=None, timeout=defaults.HTTP_TIMEOUT):
        # The token belongs to the (CorpID, secret) pair: another app's secret has its own token.
        name = f"wecom-{corpid}-{hashlib.sha1(secret.encode()).hexdigest()[:10]}"
        super().__init__(redis, api_base, name, secret, metrics=metrics, http=http, timeout=timeout)
        self.corpid = corpid

    def _request_token(self, force):
        """GET cgi-bin/gettoken: WeCom has no forced refresh; a new fetch returns what WeCom holds."""
        return self._http("GET", "/cgi-bin/gettoken", params={"corpid": self.corpid, "corpsecret": self._secret})
