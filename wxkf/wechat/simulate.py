"""Build pushes exactly as WeChat sends them (protocol ref. 1.3-1.7): for the sandbox and the tests."""
import itertools
import json
import secrets
import time
from urllib.parse import urlencode

from .crypto import PushCrypto, sha1_signature

_ids = itertools.count(int(time.time() * 1000) * 1000)


def to_xml(fields):
    parts = []
    for k, v in fields.items():
        if isinstance(v, int):
            parts.append(f"<{k}>{v}</{k}>")
        else:
            parts.append(f"<{k}><![CDATA[{v}]]></{k}>")
    return "<xml>" + "".join(parts) + "</xml>"


class PushBuilder:
    def __init__(self, token, aes_key, appid, original_id="gh_sandbox00001"):
        self.token = token
        self.appid = appid
        self.original_id = original_id
        self.crypto = PushCrypto(token, aes_key, appid)

    def message(self, openid, text="", msg_type="text", event=None, fmt="xml", msg_id=None,
                create_time=None, **extra):
        """The push's fields, as a dict in WeChat's order."""
        fields = {"ToUserName": self.original_id, "FromUserName": openid,
                  "CreateTime": int(create_time or time.time())}
        if event:
            fields.update(MsgType="event", Event=event)
        else:
            fields["MsgType"] = msg_type
            if msg_type == "text":
                fields["Content"] = text
            fields["MsgId"] = int(msg_id or next(_ids))
        fields.update(extra)
        return fields

    def request(self, fields, mode="safe", fmt="xml", timestamp=None, nonce=None):
        """(path with query string, body bytes) for the webhook; mode: plain, compat or safe."""
        timestamp = str(timestamp or int(time.time()))
        nonce = nonce or str(secrets.randbelow(10**9))
        plain = json.dumps(fields, ensure_ascii=False) if fmt == "json" else to_xml(fields)
        query = {"signature": sha1_signature(self.token, timestamp, nonce), "timestamp": timestamp,
                 "nonce": nonce}
        if mode == "plain":
            return "/wechat?" + urlencode(query), plain.encode()
        encrypt = self.crypto._prp.encrypt(plain, self.appid).decode()
        query.update(openid=fields.get("FromUserName", ""), encrypt_type="aes",
                     msg_signature=sha1_signature(self.token, timestamp, nonce, encrypt))
        if mode == "compat":
            envelope = dict(fields, Encrypt=encrypt)
        else:
            envelope = {"ToUserName": fields.get("ToUserName", ""), "Encrypt": encrypt}
        body = json.dumps(envelope, ensure_ascii=False) if fmt == "json" else to_xml(envelope)
        return "/wechat?" + urlencode(query), body.encode()
