"""The HTTP side of the console's port: the page, and a refusal for the rest."""

from __future__ import annotations

import pytest

from wfe.engine.console import web


def test_the_http_side_serves_the_page_and_refuses_the_rest() -> None:
    """GET / is the page; unknown paths 404; other methods 405; a websocket upgrade from
    another origin is refused; heads that are not HTTP are errors."""
    page = web.answer(web.parse_head(b"GET / HTTP/1.1\r\nHost: h:1\r\n\r\n"))
    assert page.startswith(b"HTTP/1.1 200 OK\r\n") and b"<title>wfe console</title>" in page
    assert b"Content-Security-Policy: default-src 'self'" in page
    assert web.answer(web.parse_head(b"GET /console.js HTTP/1.1\r\n\r\n")).startswith(
        b"HTTP/1.1 200"
    )
    assert web.answer(web.parse_head(b"GET /../keys HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert web.answer(web.parse_head(b"GET /nope.html HTTP/1.1\r\n\r\n")).startswith(
        b"HTTP/1.1 404"
    )
    assert web.answer(web.parse_head(b"POST / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
    head = web.parse_head(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:5\r\nUpgrade: websocket\r\nOrigin: http://127.0.0.1:5\r\n\r\n"
    )
    assert head.wants_websocket and head.same_origin()
    other = web.parse_head(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:5\r\nUpgrade: websocket\r\nOrigin: http://evil.example\r\n\r\n"
    )
    assert not other.same_origin()
    for bad in (b"hello\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"):
        with pytest.raises(web.BadHttp):
            web.parse_head(bad)
