"""Every request gets an answer its sender can match, or the client gives up in bounded time.

The parser's side runs on text; the client's side runs against a scripted peer speaking
websocket over an in-memory stream (the misbehaving engine these tests need: one that never
answers, or answers ``"id": null``), on the virtual clock, so give-up times are exact; the
last test uses a real engine.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from wfe.engine.cli.client import KEEPALIVE, REPLY_TIMEOUT, Client, ClientError, open_client
from wfe.engine.console import protocol

from .conftest import GUARD, Console

Peer = Callable[[WebSocketConnection, dict[str, Any]], Awaitable[None]]

# --- the parser --------------------------------------------------------------------------


@given(st.sampled_from(["id", "op", "args"]), st.integers(0, 2**40))
def test_a_repeated_key_is_refused_naming_it(key: str, second: int) -> None:
    """A request that gives one of its keys twice is refused with bad_request naming the key,
    whichever values it carries; the reply carries the id unless the id itself was repeated."""
    fields = {"id": '"a"', "op": '"ping"', "args": "{}"}
    parts = [f'"{k}": {v}' for k, v in fields.items()]
    parts.append(f'"{key}": {second if key == "id" else fields[key]}')
    with pytest.raises(protocol.BadFrame) as caught:
        protocol.parse_request("{" + ", ".join(parts) + "}", max_size=1000)
    assert caught.value.code == protocol.BAD_REQUEST
    assert str(caught.value) == f"repeated key {key!r} in request"
    assert caught.value.request_id == (None if key == "id" else "a")


def test_a_repeated_key_inside_args_is_refused_too() -> None:
    """Repeated keys are refused at any depth (the last one would silently win)."""
    with pytest.raises(protocol.BadFrame, match="^repeated key 'a' in request$") as caught:
        protocol.parse_request('{"id": 3, "op": "x", "args": {"a": 1, "a": 2}}', max_size=1000)
    assert caught.value.request_id == 3


@given(st.text(min_size=65, max_size=300))
def test_an_over_long_id_is_refused_with_the_id_as_sent(request_id: str) -> None:
    """An id over 64 characters is refused, and the refusal carries that id unchanged, so the
    client can match it."""
    text = json.dumps({"id": request_id, "op": "ping"})
    with pytest.raises(protocol.BadFrame) as caught:
        protocol.parse_request(text, max_size=10_000)
    assert caught.value.request_id == request_id
    reply = json.loads(protocol.error(caught.value.request_id, caught.value.code, "x"))
    assert reply["id"] == request_id


@pytest.mark.parametrize(
    ("value", "shown"), [("NaN", "NaN"), ("-Infinity", "-Infinity"), ("1e999", "1e999")]
)
def test_a_non_finite_number_is_refused_with_its_path_and_the_id(value: str, shown: str) -> None:
    """NaN, Infinity or a number too large for a float is refused naming where it is, and
    the refusal carries the request's id."""
    text = f'{{"id": 5, "op": "run", "args": {{"params": {{"seconds": [1, {value}]}}}}}}'
    with pytest.raises(protocol.BadFrame) as caught:
        protocol.parse_request(text, max_size=1000)
    assert str(caught.value).startswith(f"request is not JSON: {shown}")
    assert str(caught.value).endswith("(at args.params.seconds[1])")
    assert caught.value.request_id == 5


# --- the client against a scripted peer --------------------------------------------------


@asynccontextmanager
async def client_with(peer: Peer) -> AsyncIterator[Client]:
    """A ``Client`` authenticated by a peer that then runs ``peer(ws, request)`` for each
    request it reads."""
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            request = await wrap_server_stream(nursery, server_end)
            ws = await request.accept()
            auth = json.loads(await ws.get_message())
            await ws.send_message(protocol.ok(auth["id"], {"name": "t", "role": "admin"}))
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await peer(ws, json.loads(await ws.get_message()))

        nursery.start_soon(serve)
        async with open_client(client_end, "token") as client:
            yield client
        nursery.cancel_scope.cancel()


async def silent(ws: WebSocketConnection, request: dict[str, Any]) -> None:
    """Reads the request and never answers it."""


async def test_a_request_never_answered_fails_after_the_reply_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call whose reply never comes raises a one-line timeout error after reply_timeout."""
    async with client_with(silent) as client:
        started = trio.current_time()
        with pytest.raises(ClientError) as caught:
            await client.call("ping")
        assert trio.current_time() - started == REPLY_TIMEOUT
        assert caught.value.code == "timeout"
        assert str(caught.value).startswith(f"no reply to ping within {REPLY_TIMEOUT:g} s")


async def test_a_long_poll_waits_while_the_engine_answers_pings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``wait`` is not bounded by reply_timeout while the engine answers pings: its reply,
    however late, is returned."""

    async def late(ws: WebSocketConnection, request: dict[str, Any]) -> None:
        await trio.sleep(10 * REPLY_TIMEOUT)
        await ws.send_message(protocol.ok(request["id"], {"state": "succeeded"}))

    async with client_with(late) as client:
        assert await client.call("wait", job="j1") == {"state": "succeeded"}
        assert trio.current_time() >= 10 * REPLY_TIMEOUT


async def test_a_long_poll_gives_up_when_the_engine_stops_answering_pings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the engine stops reading (no pong), a pending ``wait`` fails with a one-line
    error at the first unanswered keepalive ping plus reply_timeout."""
    stuck = trio.Event()

    async def stop_reading(ws: WebSocketConnection, request: dict[str, Any]) -> None:
        stuck.set()
        await trio.sleep_forever()  # the peer's websocket reader stalls behind this message

    async with client_with(stop_reading) as client:

        async def more() -> None:  # fills the peer's one-message queue: it reads no pongs...
            await stuck.wait()
            await client.ws.send_message('{"id": 1000, "op": "ping"}')
            await client.ws.send_message('{"id": 1001, "op": "ping"}')

        async with trio.open_nursery() as nursery:
            nursery.start_soon(more)
            started = trio.current_time()
            with pytest.raises(ClientError) as caught:
                await client.call("wait", job="j1")
        assert trio.current_time() - started == KEEPALIVE + REPLY_TIMEOUT
        assert caught.value.code == "timeout"
        assert str(caught.value) == (
            f"the engine stopped answering: no pong within {REPLY_TIMEOUT:g} s"
        )


async def test_a_reply_with_a_null_id_fails_the_call_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An error reply with ``"id": null`` (the engine could not read which request it
    answers) fails the call in flight with the engine's message, at once."""

    async def unaddressed(ws: WebSocketConnection, request: dict[str, Any]) -> None:
        await ws.send_message(protocol.error(None, "bad_request", "request is not JSON: x"))

    async with client_with(unaddressed) as client:
        with pytest.raises(ClientError) as caught:
            await client.call("ping")
        assert trio.current_time() == 0
        assert caught.value.code == "bad_request"
        assert str(caught.value) == (
            "the engine could not tell which request it refused: request is not JSON: x"
        )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_nan_and_infinity_never_leave_the_client(
    value: float, autojump_clock: trio.testing.MockClock
) -> None:
    """Arguments holding NaN or an infinity are refused with a one-line error naming where,
    and nothing is sent: the next request is the first the engine reads."""
    seen: list[str] = []

    async def record(ws: WebSocketConnection, request: dict[str, Any]) -> None:
        seen.append(request["op"])
        await ws.send_message(protocol.ok(request["id"], {"pong": True}))

    async with client_with(record) as client:
        with pytest.raises(ClientError) as caught:
            await client.call("run", rscript="sleep", params={"seconds": value})
        assert caught.value.code == "bad_request"
        assert str(caught.value) == (
            f"run: args.params.seconds is {value}, which JSON cannot carry: give a finite number"
        )
        assert await client.call("ping") == {"pong": True}
        assert seen == ["ping"]


async def test_an_os_error_of_the_callers_block_comes_out_as_itself(console: Console) -> None:
    """An OSError raised inside ``connect``'s block (a closed stdout pipe) is the caller's,
    not taken for an engine that cannot be reached."""
    with trio.fail_after(GUARD), pytest.raises(BrokenPipeError, match="^stdout closed$"):
        async with console.connect() as client:
            await client.call("ping")
            raise BrokenPipeError("stdout closed")
