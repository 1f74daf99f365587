"""The console's one port: a websocket upgrade goes to the protocol, a plain GET gets the page.

trio-websocket only speaks websocket, so the server reads the HTTP request head itself
(at most ``MAX_HEAD`` bytes, within ``HEAD_TIMEOUT`` seconds). An upgrade request is handed,
bytes and all, to trio-websocket through ``wfe.engine.console.wire.Wire``, a stream that
returns what was already read before reading on. Any other request is answered here: ``GET
/`` and the files of ``engine/static/`` (the page is static and holds no data: everything it
shows comes over the authenticated websocket), 404 for other paths, 405 for other methods,
then the connection closes. An upgrade whose ``Origin`` names another host than the one it was sent to (a page
of some other site in the operator's browser) is refused with 403 before any websocket exists.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit

import attrs
import trio

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


class BadHttp(ValueError):
    """A request head that can't be parsed."""


@attrs.frozen(kw_only=True)
class HttpHead:
    """The parts of an HTTP request head the console looks at."""

    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "

    @property
    def wants_websocket(self) -> bool:
        return "websocket" in self.headers.get("upgrade", "").lower()

    def same_origin(self) -> bool:
        """True unless an ``Origin`` header names another host:port than ``Host``."""
        origin = self.headers.get("origin")
        if origin is None:
            return True  # not a browser (CLI, console, tests)
        host = self.headers.get("host", "")
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


async def read_head(stream: trio.abc.Stream) -> bytes:
    """Read until the end of the request head; return every byte read (head and beyond).

    Raises ``BadHttp`` when the head is longer than ``MAX_HEAD`` or the peer closes first.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise BadHttp(f"request head over {MAX_HEAD} bytes")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise BadHttp("connection closed before the request head ended")
        data += chunk
    return data


def parse_head(data: bytes) -> HttpHead:
    """Parse the request line and headers of ``data``. Raises ``BadHttp``."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadHttp(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadHttp(f"bad header line {line[:80]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return HttpHead(method=parts[0], target=parts[1], headers=headers)


def response(status: int, reason: str, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
             *, head_only: bool = False) -> bytes:  # fmt: skip
    """A complete HTTP/1.1 response that closes the connection."""
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in _SECURITY_HEADERS),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def static_file(target: str) -> tuple[bytes, str] | None:
    """The page file a GET ``target`` names, with its content type; None if there is none."""
    path = urlsplit(target).path
    name = "index.html" if path in ("/", "/index.html") else path.lstrip("/")
    if "/" in name or name.startswith(".") or not name:
        return None
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in _TYPES:
        return None
    try:
        body = resources.files("wfe.engine.console").joinpath("static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, OSError):
        return None
    return body, _TYPES[suffix]


def answer(head: HttpHead) -> bytes:
    """The response to a request that is not a websocket upgrade."""
    if head.method not in ("GET", "HEAD"):
        return response(
            405, "Method Not Allowed", b"only GET here; the console API is a websocket\n"
        )
    found = static_file(head.target)
    if found is None:
        return response(
            404,
            "Not Found",
            b"not found: the console page is at /\n",
            head_only=head.method == "HEAD",
        )
    body, content_type = found
    return response(200, "OK", body, content_type, head_only=head.method == "HEAD")
