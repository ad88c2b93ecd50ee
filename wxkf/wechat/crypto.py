"""Push signatures and AES encryption for Mini Programs, Official Accounts and WeCom (the CorpID
taking the AppID's place).

Built on wechatpy's `WeChatCrypto` and cipher, with what it lacks added (protocol ref. 1.4-1.6, 6):
constant-time signature checks, strict PKCS#7 (32-byte blocks) and length validation, a CSPRNG
random prefix, and the JSON reply envelope.
"""
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import struct
import time

from wechatpy.crypto import PrpCrypto, WeChatCrypto

from ..errors import BadPush, BadSignature

BLOCK = 32


def sha1_signature(*parts):
    """sha1 over the plain string sort of the parts (signature and msg_signature alike)."""
    return hashlib.sha1("".join(sorted(str(p) for p in parts)).encode()).hexdigest()


def check_signature(token, signature, *parts):
    if not signature or not hmac.compare_digest(sha1_signature(token, *parts), str(signature).lower()):
        raise BadSignature("signature mismatch")


class _StrictPrpCrypto(PrpCrypto):
    """wechatpy's AES-CBC with strict checks on what it decrypts and a CSPRNG prefix."""

    def get_random_string(self):
        return secrets.token_hex(8)

    def decrypt(self, text, app_id):
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadPush("Encrypt is not valid base64") from None
        if not raw or len(raw) % 16:
            raise BadPush("Encrypt is not a whole number of AES blocks")
        plain = self.cipher.decrypt(raw)
        pad = plain[-1]
        if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise BadPush("bad PKCS#7 padding (wrong EncodingAESKey?)")
        body = plain[16:-pad]
        if len(body) < 4:
            raise BadPush("decrypted message too short")
        (length,) = struct.unpack(">I", body[:4])
        if length > len(body) - 4:
            raise BadPush("decrypted length field exceeds the message")
        msg, receive_id = body[4:4 + length], body[4 + length:]
        if not hmac.compare_digest(receive_id, app_id.encode()):
            raise BadSignature("AppID inside the message does not match ours")
        try:
            return msg.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPush("decrypted message is not UTF-8") from None


class PushCrypto:
    """One per app, built once from config."""

    def __init__(self, token, encoding_aes_key, appid):
        self.token = token
        self.appid = appid
        self._wechatpy = WeChatCrypto(token, encoding_aes_key, appid)
        self._prp = _StrictPrpCrypto(self._wechatpy.key)

    def verify(self, signature, timestamp, nonce):
        check_signature(self.token, signature, timestamp, nonce)

    def decrypt(self, encrypt, msg_signature, timestamp, nonce):
        """Verify msg_signature over Encrypt, then decrypt and check the AppID."""
        if not isinstance(encrypt, str) or not encrypt:
            raise BadPush("Encrypt field missing")
        check_signature(self.token, msg_signature, timestamp, nonce, encrypt)
        return self._prp.decrypt(encrypt, self.appid)

    def verify_echostr(self, msg_signature, timestamp, nonce, echostr):
        """WeCom's URL verification: the echostr is encrypted; verify msg_signature over it and return
        it decrypted (protocol ref. 5.1)."""
        if not echostr:
            raise BadPush("echostr missing")
        check_signature(self.token, msg_signature, timestamp, nonce, echostr)
        return self._prp.decrypt(echostr, self.appid)

    def encrypt(self, plaintext, nonce, timestamp=None, fmt="xml"):
        """The encrypted passive-reply envelope, XML or JSON to match the push (protocol ref. 1.6)."""
        timestamp = str(timestamp or int(time.time()))
        encrypt = self._prp.encrypt(plaintext, self.appid).decode()
        signature = sha1_signature(self.token, timestamp, nonce, encrypt)
        if fmt == "json":
            return json.dumps({"Encrypt": encrypt, "MsgSignature": signature,
                               "TimeStamp": int(timestamp), "Nonce": nonce})
        return (f"<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
                f"<MsgSignature><![CDATA[{signature}]]></MsgSignature>"
                f"<TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>")
