"""Passive replies in the push's HTTP response (protocol ref. 1.6, 3.1).

Only `transfer_customer_service` is used: Mini Programs document no passive text reply, so answers
go through the send API. The reply matches the push's format (XML or JSON) and is encrypted when the
push was (safe and compatible modes); `success` is never encrypted.
"""
import json
import time

from .simulate import to_xml


def transfer(inbound, kf_account="", now=None):
    """The plaintext transfer reply for `inbound`, as XML or JSON like the push."""
    fields = {"ToUserName": inbound["openid"], "FromUserName": inbound["to"],
              "CreateTime": int(now or time.time()), "MsgType": "transfer_customer_service"}
    if inbound["format"] == "json":
        if kf_account:
            fields["TransInfo"] = {"KfAccount": kf_account}
        return json.dumps(fields, ensure_ascii=False)
    xml = to_xml(fields)
    if kf_account:
        xml = xml[:-len("</xml>")] + f"<TransInfo><KfAccount><![CDATA[{kf_account}]]></KfAccount></TransInfo></xml>"
    return xml


def render(plaintext, fmt, crypto=None, nonce=None, timestamp=None):
    """(body, content type): encrypted into the envelope when `crypto` is given."""
    body = crypto.encrypt(plaintext, nonce, timestamp, fmt=fmt) if crypto else plaintext
    ctype = "application/json" if fmt == "json" else "application/xml"
    return body, f"{ctype}; charset=utf-8"
