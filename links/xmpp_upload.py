"""Large incompressible output over HTTP: XEP-0363 uploads beside the XMPP stream.

Output travels in stanzas as base64 JSON; text compresses and streams fast, but random bytes
cost the XMPP server ~0.12 s of CPU per MB to parse. So an agent puts runs of big
incompressible ``OutputChunk``s on the server's HTTP upload service (XEP-0363; Prosody's
``mod_http_file_share``) and sends only a reference in a stanza::

    <message to="engine@example.org/wfe-engine" type="normal">
      <upload xmlns="urn:wfe:upload:1" job="j-1" attempt="1" seq="40" chunks="32"
              size="2097568" sha256="..." url="https://upload.example.org:5281/file_share/..."/>
    </message>

The file holds chunks ``seq`` .. ``seq + chunks - 1`` of one attempt as records of
``stream (1 byte) | seq (8) | length (4) | data`` (``pack`` / ``unpack``). The engine fetches
it only from the upload service its own server offers (``same_service``), checks size and
sha256, and hands the chunks to the controller in order with everything else the agent sent.

This module holds that format, the policy (which chunks go by HTTP: ``worth_uploading``), the
slot request and the HTTP client settings; the IQs go through ``XmppClient.iq`` and the batching
is ``wfe.agents.xmpp_batch``. TLS: HTTPS verified against the XMPP settings' CA (or the system's);
plain HTTP only when the XMPP connection itself is plaintext (loopback, checked by config).
"""

from __future__ import annotations

import hashlib
import ssl
import struct
import urllib.parse
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from wfe.links.errors import LinkError
from wfe.protocols.messages import OutputChunk, Stream
from wfe.protocols.xmpp import Element, quoteattr

if TYPE_CHECKING:
    import httpx

NAMESPACE = "urn:wfe:upload:1"
ELEMENT = "upload"
TAG = f"{{{NAMESPACE}}}{ELEMENT}"
UPLOAD_NS = "urn:xmpp:http:upload:0"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
XDATA = "jabber:x:data"

#: A chunk smaller than this always travels in a stanza.
MIN_UPLOAD_CHUNK = 16 * 1024
#: Bytes of a chunk compressed to judge whether it compresses.
SAMPLE_BYTES = 4096
#: A chunk whose sample compresses to more than this fraction is incompressible.
INCOMPRESSIBLE = 0.9
#: Largest file an agent uploads (less when the service allows less).
MAX_UPLOAD = 4 * 1024 * 1024
#: The most chunks one upload carries (a bound for the receiver).
MAX_UPLOAD_CHUNKS = 4096

_RECORD = struct.Struct(">BQI")
_STREAM_CODES = {Stream.STDOUT: 0, Stream.STDERR: 1}
_CODE_STREAMS = {code: stream for stream, code in _STREAM_CODES.items()}


class UploadError(LinkError):
    """An upload or a fetch failed (slot refused, HTTP error, bad file); the message says which."""


@attrs.frozen(kw_only=True)
class UploadRef:
    """Where a run of an attempt's output chunks was put, and how to check it."""

    job_id: str
    attempt: int
    seq: int  # the first chunk's seq
    chunks: int  # how many chunks, seq .. seq + chunks - 1
    size: int  # bytes of the file
    sha256: str  # hex digest of the file
    url: str

    def element(self) -> str:
        """The ``<upload>`` element as XML text."""
        attributes = "".join(
            f" {name}={quoteattr(str(value))}"
            for name, value in (
                ("job", self.job_id),
                ("attempt", self.attempt),
                ("seq", self.seq),
                ("chunks", self.chunks),
                ("size", self.size),
                ("sha256", self.sha256),
                ("url", self.url),
            )
        )
        return f'<{ELEMENT} xmlns="{NAMESPACE}"{attributes}/>'

    def stanza(self, to: str) -> str:
        """A ``<message type="normal">`` carrying the reference to ``to``."""
        return f'<message to={quoteattr(to)} type="normal">{self.element()}</message>'


def parse_ref(element: Element) -> UploadRef:
    """The ``UploadRef`` of an ``<upload>`` element. Raises ``UploadError`` naming the problem."""

    def number(name: str, minimum: int) -> int:
        value = element.get(name)
        if value is None or not value.isdigit() or int(value) < minimum:
            raise UploadError(f"upload reference: {name} must be an integer >= {minimum}")
        return int(value)

    job_id, sha256, url = (element.get(n) for n in ("job", "sha256", "url"))
    if not job_id:
        raise UploadError("upload reference: job is missing")
    if not sha256 or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise UploadError("upload reference: sha256 must be 64 lower-case hex digits")
    if not url:
        raise UploadError("upload reference: url is missing")
    chunks = number("chunks", 1)
    if chunks > MAX_UPLOAD_CHUNKS:
        raise UploadError(f"upload reference: more than {MAX_UPLOAD_CHUNKS} chunks")
    return UploadRef(
        job_id=job_id,
        attempt=number("attempt", 1),
        seq=number("seq", 0),
        chunks=chunks,
        size=number("size", 1),
        sha256=sha256,
        url=url,
    )


# --- the file --------------------------------------------------------------------------------


def pack(chunks: Sequence[OutputChunk]) -> bytes:
    """The file for a run of chunks: one record each, in order."""
    return b"".join(
        _RECORD.pack(_STREAM_CODES[c.stream], c.seq, len(c.data)) + c.data for c in chunks
    )


def unpack(data: bytes, ref: UploadRef) -> list[OutputChunk]:
    """The chunks of a fetched file, checked against ``ref``. Raises ``UploadError``.

    Checks size, sha256, and that the records are exactly seqs ``ref.seq`` ..
    ``ref.seq + ref.chunks - 1`` in order.
    """
    if len(data) != ref.size:
        raise UploadError(f"upload {ref.url}: {len(data)} bytes, the reference says {ref.size}")
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise UploadError(f"upload {ref.url}: sha256 does not match the reference")
    chunks: list[OutputChunk] = []
    view, at = memoryview(data), 0
    while at < len(data):
        if at + _RECORD.size > len(data):
            raise UploadError(f"upload {ref.url}: a record header is cut short")
        code, seq, length = _RECORD.unpack_from(view, at)
        at += _RECORD.size
        stream = _CODE_STREAMS.get(code)
        expected = ref.seq + len(chunks)
        if stream is None or seq != expected or at + length > len(data):
            raise UploadError(f"upload {ref.url}: bad record {len(chunks)} (seq {seq})")
        chunks.append(
            OutputChunk(
                job_id=ref.job_id,
                attempt=ref.attempt,
                stream=stream,
                seq=seq,
                data=bytes(view[at : at + length]),
            )
        )
        at += length
    if len(chunks) != ref.chunks:
        raise UploadError(
            f"upload {ref.url}: {len(chunks)} chunks, the reference says {ref.chunks}"
        )
    return chunks


def worth_uploading(chunk: OutputChunk) -> bool:
    """True for a chunk that is big and does not compress (a sample of it, at zlib level 1)."""
    data = chunk.data
    if len(data) < MIN_UPLOAD_CHUNK:
        return False
    sample = data[:SAMPLE_BYTES]
    return len(zlib.compress(sample, 1)) > INCOMPRESSIBLE * len(sample)


# --- the service -----------------------------------------------------------------------------


class IqSender(Protocol):
    """What this module needs of ``XmppClient``: an IQ and its answer."""

    async def iq(self, to: str, payload: str, *, kind: str = "get") -> Any: ...


@attrs.frozen(kw_only=True)
class UploadService:
    """An XEP-0363 upload component the server offers."""

    jid: str
    max_size: int | None  # the service's max-file-size, None when it does not say


@attrs.frozen(kw_only=True)
class Slot:
    """Where to PUT one file (with which headers) and where it is fetched from afterwards."""

    put: str
    get: str
    headers: dict[str, str]


async def discover(client: IqSender, domain: str) -> UploadService | None:
    """The upload service of ``domain`` (disco#items, then disco#info of each), or None.

    Raises ``UploadError`` when the server does not answer the disco queries.
    """
    items = await client.iq(domain, f'<query xmlns="{DISCO_ITEMS}"/>')
    for item in items.iter(f"{{{DISCO_ITEMS}}}item"):
        jid = item.get("jid")
        if not jid:
            continue
        info = await client.iq(jid, f'<query xmlns="{DISCO_INFO}"/>')
        features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
        if UPLOAD_NS in features:
            return UploadService(jid=jid, max_size=_max_file_size(info))
    return None


def _max_file_size(info: Any) -> int | None:
    for form in info.iter(f"{{{XDATA}}}x"):
        fields = {f.get("var"): f.findtext(f"{{{XDATA}}}value") for f in form}
        if fields.get("FORM_TYPE") == UPLOAD_NS:
            value = fields.get("max-file-size")
            if value is not None and value.strip().isdigit():
                return int(value)
    return None


async def request_slot(client: IqSender, service: UploadService, filename: str, size: int) -> Slot:
    """Ask ``service`` for a slot for a file of ``size`` bytes. Raises ``UploadError``."""
    request = (
        f'<request xmlns="{UPLOAD_NS}" filename={quoteattr(filename)} size="{size}"'
        ' content-type="application/octet-stream"/>'
    )
    answer = await client.iq(service.jid, request)
    slot = answer.find(f"{{{UPLOAD_NS}}}slot")
    put = slot.find(f"{{{UPLOAD_NS}}}put") if slot is not None else None
    get = slot.find(f"{{{UPLOAD_NS}}}get") if slot is not None else None
    if put is None or get is None or not put.get("url") or not get.get("url"):
        raise UploadError(f"{service.jid} answered the slot request without put and get URLs")
    headers = {
        h.get("name"): (h.text or "").strip()
        for h in put.iter(f"{{{UPLOAD_NS}}}header")
        if h.get("name") in ("Authorization", "Cookie", "Expires")  # what XEP-0363 allows
    }
    return Slot(put=put.get("url"), get=get.get("url"), headers=headers)


def file_name(job_id: str, attempt: int, seq: int) -> str:
    """A file name for a run of chunks (no ``/``; the service keeps it for the download)."""
    return f"{urllib.parse.quote(job_id, safe='')}-{attempt}-{seq}.out"


# --- HTTP ------------------------------------------------------------------------------------


def allowed_url(url: str, *, plain: bool) -> bool:
    """True for an https URL, or an http one when the XMPP connection is plaintext."""
    scheme = urllib.parse.urlsplit(url).scheme
    return scheme == "https" or (plain and scheme == "http")


def same_service(url: str, base: str) -> bool:
    """True when ``url`` names a file of the service whose slot URLs start with ``base``
    (same scheme, host and port, a path under ``base``'s, no query, no user name)."""
    u, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(base)
    try:
        same_port = u.port == b.port
    except ValueError:
        return False
    return (
        u.scheme == b.scheme
        and u.hostname == b.hostname
        and same_port
        and u.username is None
        and not u.query
        and not u.fragment
        and u.path.startswith(b.path)
        and ".." not in u.path.split("/")
    )


def service_base(get_url: str) -> str:
    """The base of a service's file URLs, from one of them: everything before
    ``<slot>/<filename>``."""
    parts = urllib.parse.urlsplit(get_url)
    path = parts.path.rsplit("/", 2)[0] + "/"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def http_client(ssl_context: ssl.SSLContext) -> httpx.AsyncClient:
    """An HTTP client that verifies HTTPS with ``ssl_context`` (the XMPP connection's)."""
    import httpx

    return httpx.AsyncClient(
        verify=ssl_context,
        timeout=httpx.Timeout(30.0),
        follow_redirects=False,
        trust_env=False,  # no proxy from the environment: the service is the XMPP server's
        limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
    )


async def put(http: httpx.AsyncClient, slot: Slot, data: bytes, *, plain: bool) -> None:
    """PUT ``data`` to ``slot``. Raises ``UploadError``."""
    import httpx

    if not allowed_url(slot.put, plain=plain):
        raise UploadError(f"upload slot URL {slot.put!r} is not https: refused")
    headers = {**slot.headers, "Content-Type": "application/octet-stream"}
    try:
        response = await http.put(slot.put, content=data, headers=headers)
    except httpx.HTTPError as exc:
        raise UploadError(f"PUT {slot.put}: {exc}") from None
    if response.status_code not in (200, 201):
        raise UploadError(f"PUT {slot.put}: HTTP {response.status_code}")


async def fetch(http: httpx.AsyncClient, ref: UploadRef, *, limit: int) -> bytes:
    """GET the file of ``ref`` (at most ``limit`` bytes). Raises ``UploadError``."""
    import httpx

    if ref.size > limit:
        raise UploadError(f"upload {ref.url}: {ref.size} bytes is over the limit of {limit}")
    try:
        async with http.stream("GET", ref.url) as response:
            if response.status_code != 200:
                raise UploadError(f"GET {ref.url}: HTTP {response.status_code}")
            body = bytearray()
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > ref.size:
                    raise UploadError(f"GET {ref.url}: more than the {ref.size} bytes announced")
    except httpx.HTTPError as exc:
        raise UploadError(f"GET {ref.url}: {exc}") from None
    return bytes(body)
