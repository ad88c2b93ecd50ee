"""Parse a push body (XML or JSON, any encryption mode) into one plain `Inbound` record.

Protocol ref. 1.3 (modes), 1.7 (Mini Program types), 1.8 (Official Account types), 1.9 (dedup keys).
"""
import json
import re

from xml.etree.ElementTree import ParseError, XMLParser, fromstring

from ..errors import BadPush

MESSAGE_TYPES = {"text", "image", "voice", "video", "shortvideo", "location", "link", "miniprogrampage", "file"}
"""User messages: each one opens WeChat's 48-hour / 5-message window."""

EVENTS_HANDLED = {"user_enter_tempsession", "subscribe", "kf_create_session", "kf_close_session",
                  "kf_switch_session"}
"""Events the worker acts on (welcome, handoff state). Other events are acknowledged and dropped."""

_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def body_format(body):
    """'xml' or 'json', from the first non-blank byte (WeChat's Content-Type is not documented)."""
    head = body.lstrip()[:1]
    if head == b"<":
        return "xml"
    if head == b"{":
        return "json"
    raise BadPush("body is neither XML nor JSON")


MAX_DEPTH = 8
"""Deepest nesting accepted: WeChat's pushes are flat (TransInfo is the deepest, at 3)."""

def parse_document(body, fmt):
    """Bytes or str -> flat dict of the push's fields. No DTDs or entities (XXE, billion laughs), no
    encoding but UTF-8 (a DTD in UTF-16 would slip past a byte search), no deep nesting."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPush("push is not UTF-8") from None
    if fmt == "json":
        if _too_deep_json(body):
            raise BadPush(f"JSON nested deeper than {MAX_DEPTH}")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadPush("malformed JSON") from None
        if not isinstance(doc, dict):
            raise BadPush("JSON push is not an object")
        return doc
    # Refused before parsing: no DTD means no external entities (XXE) and no entity expansion
    # (billion laughs), whatever the parser would do with them.
    if _DOCTYPE.search(body):
        raise BadPush("XML with DTD or entity declarations is refused")
    if re.search(rb"<\?xml[^>]*encoding\s*=\s*[\"'](?!utf-?8)", body, re.IGNORECASE):
        raise BadPush("XML push declares an encoding other than UTF-8")
    try:
        root = fromstring(body, parser=XMLParser())
    except (ParseError, ValueError, RecursionError):
        raise BadPush("malformed XML") from None
    if root.tag != "xml":
        raise BadPush("XML push has no <xml> root")
    if _too_deep_xml(root):
        raise BadPush(f"XML nested deeper than {MAX_DEPTH}")
    return _element_fields(root)


def _too_deep_json(body):
    """Bracket depth outside strings, counted without recursion (json.loads would recurse)."""
    depth, in_string, escaped = 0, False, False
    for b in body:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:
                escaped = True
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif b in (0x5D, 0x7D):
            depth -= 1
    return False


def _too_deep_xml(root):
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in element)
    return False


def _element_fields(element):
    """A push's elements as a dict: text for leaves, dicts for nested elements (e.g. TransInfo)."""
    out = {}
    for child in element:
        out[child.tag] = _element_fields(child) if len(child) else (child.text or "")
    return out


def _text(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise BadPush("unexpected nested element")
    return str(value)


_OPENID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SECONDS = re.compile(r"[0-9]{1,12}")
_MSG_ID = re.compile(r"[0-9]{1,32}")


def to_inbound(fields, fmt):
    """Validate the decrypted fields and build the record the worker consumes.

    Returns None for well-formed pushes wxkf does not act on (unknown types, other events);
    raises BadPush when required fields are missing.
    """
    openid = _text(fields.get("FromUserName"))
    msg_type = _text(fields.get("MsgType"))
    create_time = _text(fields.get("CreateTime"))
    if not openid or not msg_type or not create_time:
        raise BadPush("push lacks FromUserName, MsgType or CreateTime")
    # What WeChat sends, and nothing else: these become Redis keys, log fields and metric labels.
    if not _OPENID.fullmatch(openid):
        raise BadPush("FromUserName is not an openid")
    if not _SECONDS.fullmatch(create_time):
        raise BadPush("CreateTime is not a Unix time")
    event = _text(fields.get("Event")) if msg_type == "event" else ""
    if msg_type == "event":
        if event not in EVENTS_HANDLED:
            return None
        push_id = f"{openid}:{create_time}:{event}"
    elif msg_type in MESSAGE_TYPES:
        msg_id = _text(fields.get("MsgId"))
        if msg_id and not _MSG_ID.fullmatch(msg_id):
            raise BadPush("MsgId is not a message id")
        push_id = msg_id or f"{openid}:{create_time}:{msg_type}"
    else:
        return None
    keep = ("Content", "Recognition", "PicUrl", "MediaId", "Format", "Title", "AppId", "PagePath",
            "Description", "Url", "Label", "Location_X", "Location_Y", "SessionFrom", "EventKey",
            "KfAccount", "FromKfAccount", "ToKfAccount", "bizmsgmenuid")
    return {
        "id": push_id,
        "format": fmt,
        "openid": openid,
        "to": _text(fields.get("ToUserName")),
        "create_time": int(create_time),
        "type": msg_type,
        "event": event,
        "fields": {k: _text(fields[k]) for k in keep if k in fields},
    }
