"""Connection limits that hold, with real sockets against a real engine's console on loopback.

One cap for every socket on the port (``max_connections``), a small cap and one short
deadline for those not authenticated yet (``max_unauthenticated``, ``auth_timeout``), and
room kept for admins (``admin_reserve``). The engine runs no local agent: none is needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.client import ClientError, connect
from wfe.engine.console.api import serve_api
from wfe.engine.console.session import Limits
from wfe.engine.keys import read_token
from wfe.engine.runtime.daemon import open_engine

from .conftest import GUARD, workspace

#: 10 sockets: at most 3 not authenticated, 2 kept for admins, so 5 for the other tokens.
LIMITS = Limits(max_connections=10, max_unauthenticated=3, admin_reserve=2, auth_timeout=2.0,
                max_request=65536)  # fmt: skip


class Bare:
    def __init__(self, url: str, port: int, token: str) -> None:
        self.url, self.port, self.token = url, port, token

    async def stats(self) -> dict[str, Any]:
        async with connect(self.url, self.token) as admin:
            result: dict[str, Any] = (await admin.call("stats"))["console"]
            return result


@asynccontextmanager
async def bare_console(root: Path, limits: Limits) -> AsyncIterator[Bare]:
    config = workspace(root / "ws")
    token = read_token(config)
    async with open_engine(config, start_local_agents=False) as engine, trio.open_nursery() as n:
        port = await n.start(lambda task_status: serve_api(
            engine, host="127.0.0.1", port=0, token=token, limits=limits,
            task_status=task_status))  # fmt: skip
        yield Bare(f"ws://127.0.0.1:{port}/", port, token)
        n.cancel_scope.cancel()


async def viewer_token(bare: Bare) -> str:
    async with connect(bare.url, bare.token) as admin:
        made = await admin.call("token.create", name="v", role="viewer")
    return str(made["token"])


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def test_connections_racing_through_their_handshakes_stay_under_the_cap(
    tmp_path: Path,
) -> None:
    """Twenty viewers connecting at once (each trying again when refused with HTTP 503, as
    there are only three unauthenticated places) get exactly the five authenticated places
    left for non-admins; the others are refused ``unavailable`` with a one-line error."""
    with trio.fail_after(GUARD):
        async with bare_console(tmp_path, LIMITS) as bare:
            token = await viewer_token(bare)
            admitted: list[int] = []
            refused: list[str] = []
            release = trio.Event()
            settled = trio.Event()

            def outcome(done: list[Any], what: Any) -> None:
                done.append(what)
                if len(admitted) + len(refused) == 20:
                    settled.set()

            async def one(i: int) -> None:
                while True:
                    try:
                        async with connect(bare.url, token) as client:
                            await client.call("ping")
                            outcome(admitted, i)
                            await release.wait()
                            return
                    except ClientError as exc:
                        if "HTTP 503" not in str(exc):
                            assert exc.code == "unavailable"
                            outcome(refused, str(exc))
                            return

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)
                await settled.wait()
                stats = await bare.stats()
                release.set()
            assert len(admitted) == 5
            assert stats["connections"] == 6  # the five, and the admin asking
            assert stats["sockets"] <= LIMITS.max_connections
            for message in refused:
                assert "\n" not in message
                assert message.startswith("too many console connections: 5 open"), message


async def test_a_token_holder_cannot_lock_an_admin_out(tmp_path: Path) -> None:
    """With the non-admins' places all taken, another viewer is refused (``unavailable``)
    while an admin still gets in; the sockets of all of them stay within max_connections,
    and past it even an admin is refused with HTTP 503."""
    with trio.fail_after(GUARD):
        async with bare_console(tmp_path, LIMITS) as bare:
            token = await viewer_token(bare)
            async with AsyncExitStack() as stack:
                for _ in range(5):
                    await stack.enter_async_context(connect(bare.url, token))
                with pytest.raises(ClientError) as caught:
                    async with connect(bare.url, token):
                        pass
                assert caught.value.code == "unavailable"
                assert str(caught.value) == (
                    "too many console connections: 5 open; the last 2 of 7 are kept for"
                    " admin tokens (try again later)"
                )
                admins = [await stack.enter_async_context(connect(bare.url, bare.token))]
                while (await admins[0].call("stats"))["console"]["sockets"] != 6:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # the refused viewer's socket is closing: poll the API
                for _ in range(4):
                    admins.append(await stack.enter_async_context(connect(bare.url, bare.token)))
                assert (await admins[0].call("stats"))["console"]["sockets"] == 10
                with pytest.raises(ClientError, match="HTTP 503: too many console connections"):
                    async with connect(bare.url, bare.token):
                        pass


async def test_unauthenticated_sockets_are_capped_and_closed_at_the_deadline(
    tmp_path: Path,
) -> None:
    """Sockets that say nothing take at most max_unauthenticated places: one more is answered
    503 at once; each silent one is closed at auth_timeout, and then an admin gets in."""
    with trio.fail_after(GUARD):
        async with bare_console(tmp_path, LIMITS) as bare:
            started = trio.current_time()
            streams = [await trio.open_tcp_stream("127.0.0.1", bare.port) for _ in range(4)]
            answers: list[tuple[float, bytes]] = []

            async def answer(stream: trio.SocketStream) -> None:
                data = await read_all(stream)
                answers.append((trio.current_time() - started, data))
                await stream.aclose()

            async with trio.open_nursery() as nursery:
                for stream in streams:
                    nursery.start_soon(answer, stream)
            refused = [(t, a) for t, a in answers if a.startswith(b"HTTP/1.1 503 ")]
            timed_out = [(t, a) for t, a in answers if a.startswith(b"HTTP/1.1 408 ")]
            assert len(refused) == 1 and len(timed_out) == 3, answers
            assert refused[0][1].endswith(b"too many console connections\n")
            assert refused[0][0] < LIMITS.auth_timeout
            assert all(t >= LIMITS.auth_timeout - 0.1 for t, _ in timed_out)
            stats = await bare.stats()
            assert stats["unauthenticated"] == 0
            assert stats["refused"]["too_many"] == 1


async def test_a_websocket_that_never_authenticates_is_closed_at_the_one_deadline(
    tmp_path: Path,
) -> None:
    """The deadline runs from the connection, not from the upgrade: a client that upgrades
    and then says nothing is told and closed auth_timeout after it connected."""
    from trio_websocket import open_websocket_url

    with trio.fail_after(GUARD):
        async with bare_console(tmp_path, LIMITS) as bare:
            started = trio.current_time()
            async with open_websocket_url(bare.url) as ws:
                reply = await ws.get_message()
            assert '"code":"unauthenticated"' in str(reply)
            elapsed = trio.current_time() - started
            assert LIMITS.auth_timeout - 0.1 <= elapsed
