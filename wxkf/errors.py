"""Every error wxkf raises on purpose.

    WxkfError
    ├── ConfigError              bad or missing configuration (names every bad key)
    ├── KnowledgeError           a knowledge file is broken (carries file:line problems)
    ├── PushError                a push from WeChat cannot be accepted (carries the HTTP status)
    │   ├── BadSignature         403: signature, timestamp or AppID check failed
    │   ├── BadPush              400: body is not a well-formed push
    │   └── PushTooLarge         413: body over the size limit
    └── WeChatError              a call to WeChat's API did not succeed
        ├── WeChatUnreachable    network error or HTTP 5xx (retryable)
        │   └── WeChatTimeout    sent, but no answer in time: it may have arrived (never retried)
        └── WeChatApiError       WeChat answered with an errcode (retryable only for -1 system busy)
            ├── TokenInvalid     40001/40014/42001: refresh the token once and retry
            ├── QuotaExceeded    45015/45047/45009 (WeCom 95001/95002): the window or quota rules forbid this send now
            └── SessionNotOurs   WeCom 95018/95013: a human (or nobody) holds the 微信客服 session, the API may not send
"""


class WxkfError(Exception):
    retryable = False


class ConfigError(WxkfError):
    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class KnowledgeError(WxkfError):
    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("知识库有错误：\n  " + "\n  ".join(self.problems))


class PushError(WxkfError):
    status = 400


class BadSignature(PushError):
    status = 403


class BadPush(PushError):
    status = 400


class PushTooLarge(PushError):
    status = 413


class WeChatError(WxkfError):
    errcode = None


class WeChatUnreachable(WeChatError):
    retryable = True


class WeChatTimeout(WeChatUnreachable):
    """The request went out and no answer came back in time: WeChat may have acted on it. Sending
    again could give the shopper the same reply twice, so this is never retried."""
    retryable = False


class WeChatApiError(WeChatError):
    def __init__(self, errcode, errmsg="", path=""):
        self.errcode = int(errcode)
        self.errmsg = errmsg
        self.path = path
        super().__init__(f"{path}: errcode {errcode} {errmsg}".strip())

    @property
    def retryable(self):
        return self.errcode == -1


class TokenInvalid(WeChatApiError):
    CODES = (40001, 40014, 42001)


class QuotaExceeded(WeChatApiError):
    CODES = (45015, 45047, 45009, 95001, 95002)


class SessionNotOurs(WeChatApiError):
    """WeCom 微信客服: the session is with a human servicer, queued, or ended (protocol ref. 5.6), so
    `kf/send_msg` is refused. Not a fault: the bot must stay silent until the session comes back."""
    CODES = (95018, 95013)


def api_error(errcode, errmsg="", path=""):
    """The most specific WeChatApiError for an errcode."""
    for cls in (TokenInvalid, QuotaExceeded, SessionNotOurs):
        if int(errcode) in cls.CODES:
            return cls(errcode, errmsg, path)
    return WeChatApiError(errcode, errmsg, path)
