"""Build WeCom 微信客服 callbacks exactly as WeCom sends them (protocol ref. 5.1, 5.2): for the sandbox
and the tests."""
import secrets
import time
from urllib.parse import urlencode

from ..wechat.crypto import PushCrypto, sha1_signature
from ..wechat.simulate import to_xml


class KfCallbackBuilder:
    def __init__(self, token, aes_key, corpid):
        self.token = token
        self.corpid = corpid
        self.crypto = PushCrypto(token, aes_key, corpid)

    def event(self, open_kfid, token, create_time=None):
        """The decrypted callback: "messages wait for `open_kfid`", with the Token to pull with."""
        return {"ToUserName": self.corpid, "CreateTime": int(create_time or time.time()), "MsgType": "event",
                "Event": "kf_msg_or_event", "Token": token, "OpenKfId": open_kfid}

    def request(self, fields, timestamp=None, nonce=None):
        """(path with query string, body bytes) for POST /wecom/kf."""
        timestamp = str(timestamp or int(time.time()))
        nonce = nonce or str(secrets.randbelow(10**9))
        encrypt = self.crypto._prp.encrypt(to_xml(fields), self.corpid).decode()
        query = {"msg_signature": sha1_signature(self.token, timestamp, nonce, encrypt), "timestamp": timestamp,
                 "nonce": nonce}
        body = f"<xml><ToUserName><![CDATA[{self.corpid}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        return "/wecom/kf?" + urlencode(query), body.encode()

    def verification(self, echo="1288432023552776189", timestamp=None, nonce=None):
        """The query string of WeCom's URL verification GET: an encrypted echostr."""
        timestamp = str(timestamp or int(time.time()))
        nonce = nonce or str(secrets.randbelow(10**9))
        echostr = self.crypto._prp.encrypt(echo, self.corpid).decode()
        return "/wecom/kf?" + urlencode({"msg_signature": sha1_signature(self.token, timestamp, nonce, echostr),
                                         "timestamp": timestamp, "nonce": nonce, "echostr": echostr})
