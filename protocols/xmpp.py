"""The XMPP form of agent messages, sans-IO: stanza text out, parsed elements in.

A message travels in a ``<message type="normal">`` stanza as the text of one namespaced
child element, never in ``<body>``::

    <message to="engine@example.org/wfe" type="normal">
      <wfe xmlns="urn:wfe:agent:1">{"v":1,"type":"ack",...}</wfe>
    </message>

The text is the message's wire form (``wfe.protocols.codec``: ASCII JSON), XML-escaped. When that
is big and compresses well, or does not fit one stanza, it is sent ``enc="zlib"`` instead:
base64 of the zlib-compressed JSON. A compressed text still too big for one stanza is cut into
fragments, each its own stanza, marked ``id`` (unique per sender), ``part`` (from 1) and
``parts``; a sender sends the fragments of one message back to back, so a receiver keeps at
most one unfinished message per sender (``PayloadAssembler``).

Stanza size: a stanza we build holds at most ``payload_budget(max_stanza)`` characters of
payload text, half the server's limit less 4 KiB for the envelope, so it stays well under
``max_stanza`` (Prosody's ``c2s_stanza_size_limit``, 256 KiB by default). With the default, an
``OutputChunk`` of ``MAX_CHUNK_BYTES`` (64 KiB; ~87.5 KiB of JSON) goes plain in one stanza, and
a ``Dispatch`` of the largest RScript (128 KiB) goes compressed in one stanza unless its text
is incompressible, when it is split in two or three.

Presence: agents and the controller put a ``PresenceInfo`` (role, a random instance id per
connection, and for agents their capabilities and load) as JSON in the same element of their
``<presence>``. Nothing here does I/O or reads a clock; ids come from the caller's counter.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
import zlib
from typing import Any, Protocol

import attrs

from wfe.protocols import codec
from wfe.protocols.errors import DecodeError, ProtocolError
from wfe.protocols.messages import MAX_MESSAGE_BYTES, Capabilities, Message

NAMESPACE = "urn:wfe:agent:1"
ELEMENT = "wfe"
TAG = f"{{{NAMESPACE}}}{ELEMENT}"  # the ElementTree name of the payload element
DELAY_TAG = "{urn:xmpp:delay}delay"  # marks a stanza the server stored while we were offline
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"

#: Prosody's default ``c2s_stanza_size_limit``.
DEFAULT_MAX_STANZA = 256 * 1024
#: The smallest server limit we can work with.
MIN_MAX_STANZA = 16 * 1024
#: Room kept in every stanza for the envelope: ``to``, ``from`` (added by the server), ids.
ENVELOPE_RESERVE = 4 * 1024
#: Plain JSON shorter than this is never compressed.
COMPRESS_MIN_BYTES = 4 * 1024
#: Compressed text is used when at most this fraction of the plain text's size.
COMPRESS_GAIN = 0.75
#: How many fragments one message may have (a bound for the receiver's memory).
MAX_PARTS = 64


_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})
# Characters XML 1.0 does not allow at all (C0 controls but tab, newline, return; U+FFFE/F).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def escape(text: str) -> str:
    """``text`` as XML character data (``&``, ``<``, ``>`` escaped)."""
    return text.translate(_TEXT_ESCAPES)


def quoteattr(value: str) -> str:
    """``value`` as a double-quoted XML attribute value."""
    return '"' + value.translate(_ATTR_ESCAPES) + '"'


def printable(text: str) -> str:
    """``text`` with the characters XML cannot carry replaced by ``?`` (for people, not data)."""
    return _XML_INVALID.sub("?", text)


class PayloadTooLarge(ProtocolError, ValueError):
    """A message whose wire form exceeds ``MAX_MESSAGE_BYTES``: it cannot be sent."""


class Element(Protocol):
    """What we read of a parsed XML element (``xml.etree.ElementTree.Element`` has it)."""

    text: str | None

    def get(self, key: str, default: Any = None) -> Any: ...


def payload_budget(max_stanza: int) -> int:
    """Characters of payload text one stanza may carry when the server allows ``max_stanza``.

    Raises ``ValueError`` below ``MIN_MAX_STANZA``.
    """
    if max_stanza < MIN_MAX_STANZA:
        raise ValueError(f"max_stanza must be at least {MIN_MAX_STANZA} bytes, got {max_stanza}")
    return max_stanza // 2 - ENVELOPE_RESERVE


@attrs.frozen(kw_only=True)
class Fragment:
    """The payload element of one stanza: its attributes (besides xmlns) and its text."""

    text: str  # already XML-escaped
    enc: str | None = None  # None: JSON; "zlib": base64 of zlib-compressed JSON
    id: str | None = None  # set on every fragment of a message in several parts
    part: int = 1
    parts: int = 1

    def element(self) -> str:
        """The ``<wfe>`` element as XML text."""
        attributes = "".join(
            f" {name}={quoteattr(str(value))}"
            for name, value in (
                ("enc", self.enc),
                ("id", self.id),
                ("part", self.part if self.parts > 1 else None),
                ("parts", self.parts if self.parts > 1 else None),
            )
            if value is not None
        )
        return f'<{ELEMENT} xmlns="{NAMESPACE}"{attributes}>{self.text}</{ELEMENT}>'


def fragments(message: Message, *, budget: int, message_id: str) -> list[Fragment]:
    """The payload of ``message`` as one or more fragments of at most ``budget`` characters.

    ``message_id`` names the fragments when there are several; it must differ from the
    sender's previous ones. Raises ``PayloadTooLarge`` above ``MAX_MESSAGE_BYTES``.
    """
    data = codec.encode(message)
    if len(data) > MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(
            f"{type(message).__name__} of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}"
        )
    plain = escape(data.decode("ascii"))
    if len(plain) < COMPRESS_MIN_BYTES:
        return [Fragment(text=plain)]
    packed = base64.b64encode(zlib.compress(data, 1)).decode("ascii")
    if len(plain) <= budget and len(packed) > COMPRESS_GAIN * len(plain):
        return [Fragment(text=plain)]
    if len(packed) <= budget:
        return [Fragment(text=packed, enc="zlib")]
    pieces = [packed[i : i + budget] for i in range(0, len(packed), budget)]
    return [
        Fragment(text=piece, enc="zlib", id=message_id, part=n, parts=len(pieces))
        for n, piece in enumerate(pieces, start=1)
    ]


def message_stanza(to: str, fragment: Fragment) -> str:
    """A ``<message type="normal">`` to ``to`` carrying ``fragment``."""
    return f'<message to={quoteattr(to)} type="normal">{fragment.element()}</message>'


class PayloadEncoder:
    """Turns messages into stanza texts for one sender, numbering multi-part messages."""

    def __init__(self, *, max_stanza: int = DEFAULT_MAX_STANZA) -> None:
        self.budget = payload_budget(max_stanza)
        self._next_id = 0

    def stanzas(self, to: str, message: Message) -> list[str]:
        """The stanzas that carry ``message`` to ``to``, to be sent in order, back to back.

        Raises ``PayloadTooLarge``.
        """
        self._next_id += 1
        parts = fragments(message, budget=self.budget, message_id=f"m{self._next_id}")
        return [message_stanza(to, fragment) for fragment in parts]


@attrs.define
class _Partial:
    id: str
    parts: int
    pieces: list[str]
    size: int


class PayloadAssembler:
    """Rebuilds messages from received payload elements, refusing anything malformed.

    Keeps at most one unfinished message per sender. A new message from a sender whose
    previous one is unfinished drops the unfinished one (counted in ``dropped``): the
    fragments of one message arrive back to back unless the sender lost its connection.
    """

    def __init__(self, *, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.dropped = 0
        self._partial: dict[str, _Partial] = {}
        # base64 of max_bytes that did not compress at all, plus zlib's worst-case overhead
        self._max_text = 4 * math.ceil((max_bytes + max_bytes // 100 + 64) / 3)

    def feed(self, sender: str, element: Element) -> Message | None:
        """Take one payload element from ``sender``; return the message once it is whole.

        Raises ``DecodeError`` naming the problem; the sender's unfinished message, if any,
        is dropped then.
        """
        text = element.text or ""
        enc = element.get("enc")
        if enc not in (None, "zlib"):
            self._forget(sender)
            raise DecodeError(f"unknown payload encoding {enc!r}")
        parts_attr = element.get("parts")
        if parts_attr is None:
            self._forget(sender)
            return self._decode(text, enc)
        if enc != "zlib":
            self._forget(sender)
            raise DecodeError("a payload in parts must be enc='zlib'")
        message_id = element.get("id")
        part, parts = _number(element.get("part")), _number(parts_attr)
        if not message_id or part is None or parts is None or not 1 <= part <= parts <= MAX_PARTS:
            self._forget(sender)
            raise DecodeError(
                f"bad fragment: id={message_id!r} part={element.get('part')!r} parts={parts_attr!r}"
                f" (parts must be 1..{MAX_PARTS})"
            )
        partial = self._partial.get(sender)
        if part == 1:
            self._forget(sender)
            partial = self._partial[sender] = _Partial(
                id=message_id, parts=parts, pieces=[], size=0
            )
        elif (
            partial is None
            or partial.id != message_id
            or partial.parts != parts
            or len(partial.pieces) != part - 1
        ):
            self._forget(sender)
            raise DecodeError(f"fragment {part}/{parts} of message {message_id!r} out of order")
        partial.pieces.append(text)
        partial.size += len(text)
        if partial.size > self._max_text:
            self._forget(sender)
            raise DecodeError(f"message {message_id!r} exceeds the limit of {self.max_bytes} bytes")
        if part < parts:
            return None
        del self._partial[sender]
        return self._decode("".join(partial.pieces), enc)

    def forget(self, sender: str) -> None:
        """Drop ``sender``'s unfinished message (it went offline)."""
        self._forget(sender)

    def clear(self) -> None:
        """Drop every unfinished message (our own connection ended)."""
        self.dropped += len(self._partial)
        self._partial.clear()

    def pending(self) -> int:
        """How many senders have an unfinished message."""
        return len(self._partial)

    def _forget(self, sender: str) -> None:
        if self._partial.pop(sender, None) is not None:
            self.dropped += 1

    def _decode(self, text: str, enc: str | None) -> Message:
        if len(text) > (self._max_text if enc else self.max_bytes):
            raise DecodeError(
                f"payload of {len(text)} characters exceeds the limit of {self.max_bytes} bytes"
            )
        if enc is None:
            try:
                data = text.encode("ascii")
            except UnicodeEncodeError:
                raise DecodeError("payload is not ASCII JSON") from None
        else:
            data = _inflate(text, self.max_bytes)
        return codec.decode(data, max_bytes=self.max_bytes)


def _number(value: Any) -> int | None:
    if not isinstance(value, str) or not value.isdigit() or len(value) > 6:
        return None
    return int(value)


def _inflate(text: str, max_bytes: int) -> bytes:
    try:
        packed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("payload is not valid base64") from None
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(packed, max_bytes + 1)
    except zlib.error as exc:
        raise DecodeError(f"payload does not inflate: {exc}") from None
    if len(data) > max_bytes or inflater.unconsumed_tail:
        raise DecodeError(f"payload inflates beyond the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise DecodeError("payload is truncated zlib data")
    return data


# --- presence --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PresenceInfo:
    """What a wfe peer says about itself in its presence."""

    role: str  # "agent" or "controller"
    instance: str  # random per connection: a new one means the peer reconnected or restarted
    name: str = ""
    capabilities: Capabilities | None = None
    free_slots: int | None = None
    running: int = 0

    def status_text(self) -> str:
        """A line for people (the presence's ``<status>``)."""
        if self.role != "agent" or self.capabilities is None:
            return f"wfe {self.role}"
        free = "?" if self.free_slots is None else str(self.free_slots)
        return f"wfe agent: {free} of {self.capabilities.slots} slots free, site {self.capabilities.site}"


def presence_stanza(
    to: str | None, info: PresenceInfo | None = None, *, available: bool = True
) -> str:
    """A presence: directed to ``to``, or broadcast when ``to`` is None."""
    attributes = f" to={quoteattr(to)}" if to else ""
    if not available:
        return f'<presence{attributes} type="unavailable"/>'
    if info is None:
        return f"<presence{attributes}><priority>0</priority></presence>"
    payload = escape(json.dumps(_presence_dict(info), separators=(",", ":"), ensure_ascii=True))
    status = escape(printable(info.status_text()))
    return (
        f"<presence{attributes}><priority>0</priority><status>{status}</status>"
        f'<{ELEMENT} xmlns="{NAMESPACE}">{payload}</{ELEMENT}></presence>'
    )


def _presence_dict(info: PresenceInfo) -> dict[str, Any]:
    data: dict[str, Any] = {"role": info.role, "instance": info.instance, "name": info.name}
    if info.capabilities is not None:
        data["capabilities"] = attrs.asdict(info.capabilities)
    if info.free_slots is not None:
        data["free_slots"] = info.free_slots
    data["running"] = info.running
    return data


def parse_presence(element: Element) -> PresenceInfo:
    """The ``PresenceInfo`` in a presence's payload element. Raises ``DecodeError``."""
    text = element.text or ""
    if len(text) > 16 * 1024:
        raise DecodeError(f"presence payload of {len(text)} characters is too long")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DecodeError(f"presence payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeError("presence payload: $: expected an object")
    role, instance = data.get("role"), data.get("instance")
    if role not in ("agent", "controller") or not isinstance(instance, str) or not instance:
        raise DecodeError("presence payload: needs role 'agent' or 'controller' and an instance")
    caps = data.get("capabilities")
    capabilities: Capabilities | None = None
    if caps is not None:
        try:
            capabilities = _capabilities(caps)
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"presence payload: $.capabilities: {exc}") from None
    free, running, name = data.get("free_slots"), data.get("running", 0), data.get("name", "")
    if free is not None and not _is_int(free):
        raise DecodeError("presence payload: $.free_slots: expected an integer")
    if not _is_int(running) or not isinstance(name, str):
        raise DecodeError("presence payload: $.running or $.name has the wrong type")
    return PresenceInfo(
        role=role,
        instance=instance,
        name=name,
        capabilities=capabilities,
        free_slots=free,
        running=running,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _capabilities(data: Any) -> Capabilities:
    if not isinstance(data, dict):
        raise TypeError("expected an object")
    slots, memory = data.get("slots"), data.get("memory")
    site, tags, storage = data.get("site", "local"), data.get("tags", []), data.get("storage", [])
    if (
        not isinstance(slots, int)
        or isinstance(slots, bool)
        or (memory is not None and not _is_int(memory))
    ):
        raise TypeError("slots and memory must be integers")
    if not isinstance(site, str) or not _strings(tags) or not _strings(storage):
        raise TypeError("site must be a string, tags and storage arrays of strings")
    return Capabilities(
        slots=slots, memory=memory, site=site, tags=tuple(tags), storage=tuple(storage)
    )


def _strings(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


# --- errors and JIDs -------------------------------------------------------------------------


def error_stanza(to: str, condition: str, text: str, *, kind: str = "auth") -> str:
    """A ``<message type="error">`` telling ``to`` why its payload was not taken."""
    return (
        f'<message to={quoteattr(to)} type="error"><error type={quoteattr(kind)}>'
        f'<{condition} xmlns="{STANZAS_NS}"/><text xmlns="{STANZAS_NS}">{escape(printable(text))}</text>'
        "</error></message>"
    )


def bare_jid(jid: str) -> str:
    """``user@domain`` of ``user@domain/resource`` (lower-cased local part and domain)."""
    bare = jid.split("/", 1)[0]
    return bare.lower()


def jid_domain(jid: str) -> str:
    """The domain of a JID."""
    return bare_jid(jid).rpartition("@")[2]


def is_bare_jid(jid: str) -> bool:
    """True for ``user@domain`` with both parts non-empty and no resource."""
    local, at, domain = jid.partition("@")
    return (
        bool(local and at and domain)
        and "/" not in jid
        and "@" not in domain
        and not any(c.isspace() for c in jid)
    )


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``*.localhost`` and loopback addresses (no DNS lookup)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
