"""Malformed, unauthenticated and oversized traffic on a raw websocket: each gets a clear
error, and neither the connection (where it can stay) nor the engine is harmed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from wfe.engine.console.session import Limits

from .conftest import GUARD, Console, open_console


@asynccontextmanager
async def raw(console: Console, *, auth: bool = True) -> AsyncIterator[WebSocketConnection]:
    """A plain websocket (on a TCP stream we close ourselves: trio-websocket's own client
    leaves its socket open when the server closes first)."""
    port = int(console.url.rsplit(":", 1)[1].strip("/"))
    async with trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            ws = await wrap_client_stream(
                nursery, stream, f"127.0.0.1:{port}", "/", max_message_size=64 * 1024 * 1024
            )
            if auth:
                await ws.send_message(
                    json.dumps({"id": 0, "op": "auth", "args": {"token": console.token}})
                )
                assert json.loads(await ws.get_message())["ok"] is True
            yield ws
        finally:
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def ask(ws: WebSocketConnection, text: str | bytes) -> dict[str, Any]:
    await ws.send_message(text)
    return json.loads(await ws.get_message())  # type: ignore[no-any-return]


async def engine_unharmed(console: Console) -> None:
    """A new connection runs a job to success."""
    async with console.connect() as client:
        job = (await client.call("run", rscript="noop"))["job"]
        assert (await client.call("wait", job=job))["state"] == "succeeded"


BAD = [
    ("{not json", "bad_request", "request is not JSON: Expecting property name"),
    ("[1, 2]", "bad_request", "a request must be a JSON object, not an array"),
    ('"auth"', "bad_request", "a request must be a JSON object, not a string"),
    (
        '{"id": 1}',
        "bad_request",
        'op is missing: a request is {"id": 1, "op": "...", "args": {}}',
    ),
    (
        '{"id": 2, "op": "jobs", "args": [1]}',
        "bad_request",
        "args must be a JSON object, not an array",
    ),
    ('{"id": 3, "op": "jobs", "extra": 1}', "bad_request", "unknown key(s) in request: extra"),
    (
        '{"id": {"x": 1}, "op": "jobs"}',
        "bad_request",
        "id must be an integer or a string of at most 64 characters",
    ),
    (
        '{"id": 4, "op": "jobs", "args": {"limit": NaN}}',
        "bad_request",
        "request is not JSON: NaN is not JSON",
    ),
    ('{"id": 5, "op": "fly"}', "unknown_op", "unknown op 'fly' (known: "),
    ('{"id": 10, "op": "ping", "id": 11}', "bad_request", "repeated key 'id' in request"),
    (
        '{"id": 6, "op": "auth", "args": {"token": "x"}}',
        "bad_request",
        "already authenticated as bootstrap",
    ),
    (
        '{"id": 7, "op": "job", "args": {"job": 7}}',
        "bad_request",
        "args.job: expected a string",
    ),
    ('{"id": 8, "op": "job", "args": {}}', "bad_request", "args.job is required"),
]


async def test_bad_requests_get_an_error_and_the_connection_goes_on(console: Console) -> None:
    """A malformed request is answered with its code and a one-line message naming the
    problem; the same connection then answers a good request."""
    with trio.fail_after(GUARD):
        async with raw(console) as ws:
            for text, code, message in BAD:
                reply = await ask(ws, text)
                assert reply["ok"] is False, text
                assert reply["error"]["code"] == code, text
                assert reply["error"]["message"].startswith(message), reply
                assert "\n" not in reply["error"]["message"]
                pong = await ask(ws, '{"id": 9, "op": "ping"}')
                assert pong == {"id": 9, "ok": True, "result": {"pong": True}}


async def test_a_refused_request_carries_its_id_as_sent(console: Console) -> None:
    """Ids the engine refuses (over 64 characters, a float, an object) come back in the
    refusal exactly as sent, so the client can match it; ``"id": null`` only when the id
    can't be known (text that is not JSON, the id given twice)."""
    with trio.fail_after(GUARD):
        async with raw(console) as ws:
            for request_id in ["x" * 65, 1.5, {"a": [1]}, 2**53]:
                reply = await ask(ws, json.dumps({"id": request_id, "op": "ping"}))
                assert reply["id"] == request_id
                assert reply["error"]["code"] == "bad_request"
            assert (await ask(ws, '{"id": 1, "op": "ping", "id": 2}'))["id"] is None
            assert (await ask(ws, '{"id": 1, "op": "ping"'))["id"] is None
            assert (await ask(ws, '{"id": 3, "op": "ping"}'))["ok"] is True


async def test_binary_frames_are_read_as_utf8_text(console: Console) -> None:
    """A request in a binary frame is accepted if it is UTF-8 JSON, refused if not."""
    with trio.fail_after(GUARD):
        async with raw(console) as ws:
            assert (await ask(ws, b'{"id": 1, "op": "ping"}'))["ok"] is True
            reply = await ask(ws, b"\xff\xfe")
            assert reply["error"] == {"code": "bad_request", "message": "request is not UTF-8 text"}


async def test_an_oversized_request_is_refused_and_the_connection_stays(console: Console) -> None:
    """A request over the server's request limit (64 KiB here) gets too_large; the
    connection then works."""
    with trio.fail_after(GUARD):
        async with raw(console) as ws:
            big = json.dumps(
                {"id": 1, "op": "run", "args": {"rscript": "noop", "params": {"x": "y" * 100_000}}}
            )
            reply = await ask(ws, big)
            assert reply["error"]["code"] == "too_large"
            assert (
                reply["error"]["message"]
                == f"request of {len(big)} bytes is over the limit of 65536"
            )
            assert (await ask(ws, '{"id": 2, "op": "jobs"}'))["result"] == []  # nothing was run
        await engine_unharmed(console)


async def test_a_message_over_the_transport_limit_closes_only_that_connection(
    console: Console,
) -> None:
    """A message over the websocket limit (16 MiB) closes that connection with 1009 and
    says why; other connections and the engine go on."""
    with trio.fail_after(GUARD):
        async with console.connect() as other:
            async with raw(console) as ws:
                await ws.send_message("x" * (16 * 1024 * 1024 + 1))
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason.code == 1009
            assert await other.call("ping") == {"pong": True}
        await engine_unharmed(console)


UNAUTHENTICATED = [
    (
        '{"id": 1, "op": "jobs"}',
        'authenticate first: send {"id": 1, "op": "auth", "args": {"token": "..."}}',
    ),
    ('{"id": 1, "op": "auth", "args": {"token": "wrong"}}', "bad or revoked token"),
    ('{"id": 1, "op": "auth", "args": {}}', "bad or revoked token"),
    (
        "garbage",
        "authenticate first; and: request is not JSON: Expecting value: line 1 column 1 (char 0)",
    ),
]


async def test_unauthenticated_requests_are_refused_and_closed(console: Console) -> None:
    """Without a good auth first, the request is answered `unauthenticated`, nothing runs,
    and the connection is closed with 4401."""
    with trio.fail_after(GUARD):
        for first, message in UNAUTHENTICATED:
            async with raw(console, auth=False) as ws:
                reply = await ask(ws, first)
                assert reply["error"] == {"code": "unauthenticated", "message": message}
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason.code == 4401
        async with console.connect() as client:
            assert await client.call("jobs") == []


async def test_another_protocol_version_is_refused(console: Console) -> None:
    """A client asking for another protocol version is told which one the engine speaks."""
    with trio.fail_after(GUARD):
        async with raw(console, auth=False) as ws:
            reply = await ask(
                ws,
                json.dumps(
                    {
                        "id": 1,
                        "op": "auth",
                        "args": {"token": console.token, "protocol": "wfe.console.v9"},
                    }
                ),
            )
            assert reply["error"] == {
                "code": "unsupported_protocol",
                "message": "this engine speaks wfe.console.v1, not 'wfe.console.v9'",
            }


async def test_a_silent_connection_is_closed_after_the_auth_timeout(tmp_path: Path) -> None:
    """A connection that sends nothing is told so and closed after auth_timeout."""
    with trio.fail_after(GUARD):
        async with open_console(tmp_path, Limits(auth_timeout=0.3, max_request=65536)) as console:
            started = trio.current_time()  # the deadline runs from the connection
            async with raw(console, auth=False) as ws:
                reply = json.loads(await ws.get_message())
                assert reply["error"] == {
                    "code": "unauthenticated",
                    "message": "no auth request within 0.3 s",
                }
                assert trio.current_time() - started >= 0.29


async def test_many_requests_at_once_each_get_one_reply(console: Console) -> None:
    """Pipelined requests (more than may run at once) are all answered, once each."""
    with trio.fail_after(GUARD):
        async with raw(console) as ws:
            for i in range(100):
                await ws.send_message(json.dumps({"id": i, "op": "ping"}))
            ids = sorted([json.loads(await ws.get_message())["id"] for _ in range(100)])
            assert ids == list(range(100))


async def test_plain_http_gets_the_page_or_a_clear_status(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the console's port: GET / is the page, garbage is 400, a head that never ends is
    408 after the head timeout; the engine serves websockets all along."""
    from wfe.engine.console import web

    monkeypatch.setattr(web, "HEAD_TIMEOUT", 0.3)
    port = int(console.url.rsplit(":", 1)[1].strip("/"))

    async def exchange(data: bytes) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            received = b""
            while chunk := await stream.receive_some():
                received += chunk
            return received

    with trio.fail_after(GUARD):
        page = await exchange(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert page.startswith(b"HTTP/1.1 200 OK") and b"console.js" in page
        assert (await exchange(b"HELLO\r\n\r\n")).startswith(b"HTTP/1.1 400 Bad Request")
        assert (await exchange(b"GET / HTTP/1.1\r\n")).startswith(b"HTTP/1.1 408 Request Timeout")
        await engine_unharmed(console)
