"""The Prosody fixtures, proven with real slixmpp clients running in trio through trio-asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import slixmpp
import trio
import trio_asyncio

from wfe.engine.devtools.prosody import (
    DEFAULT_STANZA_SIZE_LIMIT,
    INSTALL_HINT,
    ProsodyError,
    ProsodyNotInstalled,
    ProsodyServer,
    main,
    start_prosody,
)

if TYPE_CHECKING:
    from conftest import Account

pytestmark = pytest.mark.xmpp

EVENTS = (
    "session_start",
    "disconnected",
    "message",
    "stream_error",
    "failed_auth",
    "ssl_invalid_chain",
)
READ_SIZE = 8192  # Prosody 0.12 reads c2s sockets 8 KiB at a time (net/server_epoll.lua)


class Peer:
    """A slixmpp client whose events a trio task can await, in the order they happened.

    ``reconnect=True`` makes it connect again whenever it is disconnected, as a long-lived
    engine or agent link would (slixmpp itself does not).
    """

    def __init__(
        self,
        server: ProsodyServer,
        account: Account,
        *,
        ca_path: Path | None = None,
        reconnect: bool = False,
    ) -> None:
        self.server = server
        self.xmpp = slixmpp.ClientXMPP(f"{account.jid}/wfe", account.password)
        self.xmpp.enable_direct_tls = False
        if server.tls:
            self.xmpp.enable_starttls, self.xmpp.enable_plaintext = True, False
            self.xmpp.ca_certs = ca_path
        else:
            self.xmpp.enable_starttls, self.xmpp.enable_plaintext = False, True
            self.xmpp.plugin["feature_mechanisms"].unencrypted_plain = True
        self.closing = False
        self.history: list[str] = []  # every recorded event name, in order
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        for name in EVENTS:
            self.xmpp.add_event_handler(name, self._recorder(name))
        if reconnect:
            self.xmpp.add_event_handler("disconnected", self._reconnect)

    @property
    def jid(self) -> str:
        """The full JID this client binds (a fixed resource, so it survives a reconnect)."""
        return str(self.xmpp.boundjid.full)

    def connect(self) -> None:
        self.xmpp.connect(self.server.host, self.server.port)

    async def expect(self, name: str) -> Any:
        """The data of the next ``name`` event; fails on an unexpected session end or error."""
        while True:
            event, data = await trio_asyncio.aio_as_trio(self._events.get)()
            if event == name:
                return data
            if event in ("failed_auth", "ssl_invalid_chain", "stream_error"):
                raise AssertionError(f"{self.jid}: {event} {data!r} while waiting for {name}")

    def send(self, to: Peer, body: str) -> None:
        self.xmpp.send_message(mto=to.jid, mbody=body, mtype="chat")

    async def close(self) -> None:
        self.closing = True
        await trio_asyncio.aio_as_trio(self._close)()

    async def _close(self) -> None:
        self.xmpp.cancel_connection_attempt()
        if self.xmpp.transport is not None:
            await self.xmpp.disconnect(wait=2)

    def _recorder(self, name: str) -> Callable[[Any], None]:
        def record(data: Any) -> None:
            self.history.append(name)
            self._events.put_nowait((name, data))

        return record

    def _reconnect(self, _reason: Any) -> None:
        if not self.closing:
            self.connect()


@asynccontextmanager
async def peers(
    server: ProsodyServer, *accounts: Account, **options: Any
) -> AsyncIterator[list[Peer]]:
    """Clients for ``accounts``, each past ``session_start``; disconnected on the way out."""
    clients = [Peer(server, account, **options) for account in accounts]
    try:
        for client in clients:
            client.connect()
        for client in clients:
            await client.expect("session_start")
        yield clients
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            for client in clients:
                await client.close()


async def test_two_clients_exchange_a_message_over_plaintext_loopback(
    prosody: ProsodyServer, new_account: Callable[[ProsodyServer], Account]
) -> None:
    """Two accounts log in with PLAIN over loopback and a chat message goes from one to the other."""
    with trio.fail_after(10):
        async with (
            trio_asyncio.open_loop(),
            peers(prosody, new_account(prosody), new_account(prosody)) as (a, b),
        ):
            a.send(b, "hello over plaintext")
            message = await b.expect("message")
            assert message["body"] == "hello over plaintext"
            assert str(message["from"]) == a.jid


async def test_two_clients_exchange_a_message_over_verified_starttls(
    prosody_tls: ProsodyServer, new_account: Callable[[ProsodyServer], Account]
) -> None:
    """With the generated CA, clients verify the server, upgrade with STARTTLS and exchange a message."""
    server = prosody_tls
    assert server.ca_path is not None and server.ca_path.is_file()
    accounts = new_account(server), new_account(server)
    with trio.fail_after(10):
        async with (
            trio_asyncio.open_loop(),
            peers(server, *accounts, ca_path=server.ca_path) as (a, b),
        ):
            assert a.xmpp.transport.get_extra_info("sslcontext") is not None
            a.send(b, "hello over tls")
            message = await b.expect("message")
            assert message["body"] == "hello over tls"


async def test_a_client_without_the_ca_cannot_connect(
    prosody_tls: ProsodyServer, new_account: Callable[[ProsodyServer], Account]
) -> None:
    """A client that trusts only the system CAs refuses the server's certificate and never logs in."""
    with trio.fail_after(10):
        async with trio_asyncio.open_loop():
            client = Peer(prosody_tls, new_account(prosody_tls))
            try:
                client.connect()
                error = await client.expect("ssl_invalid_chain")
                assert "session_start" not in client.history
                assert isinstance(error, ssl.SSLCertVerificationError)
                assert "certificate verify failed" in str(error)
            finally:
                client.xmpp.abort()
                await client.close()


def _stream_features(server: ProsodyServer) -> str:
    """Open a raw c2s stream and return the server's first ``<stream:features/>``."""
    header = (
        f"<?xml version='1.0'?><stream:stream to='{server.domain}' version='1.0' "
        "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    received = b""
    with socket.create_connection((server.host, server.port), timeout=5) as connection:
        connection.sendall(header.encode())
        while b"</stream:features>" not in received:
            chunk = connection.recv(4096)
            assert chunk, f"stream closed before features: {received!r}"
            received += chunk
    return received.decode()


def test_the_tls_server_requires_starttls_before_any_authentication(
    prosody_tls: ProsodyServer,
) -> None:
    """The TLS server offers only a required STARTTLS: no SASL mechanism before encryption."""
    features = _stream_features(prosody_tls)
    assert "urn:ietf:params:xml:ns:xmpp-tls" in features and "<required" in features
    assert "mechanisms" not in features


def test_the_plaintext_server_offers_plain_and_no_starttls(prosody: ProsodyServer) -> None:
    """The plaintext server offers PLAIN on the unencrypted stream and no STARTTLS."""
    features = _stream_features(prosody)
    assert "<mechanism>PLAIN</mechanism>" in features
    assert "xmpp-tls" not in features


async def test_clients_reconnect_after_prosody_restarts(
    prosody_factory: Callable[..., ProsodyServer], new_account: Callable[[ProsodyServer], Account]
) -> None:
    """restart() ends every session with system-shutdown; clients that reconnect log in again and talk."""
    server = prosody_factory()
    port = server.port
    accounts = new_account(server), new_account(server)
    with trio.fail_after(20):
        async with trio_asyncio.open_loop(), peers(server, *accounts, reconnect=True) as (a, b):
            first_pid = server.pid
            await trio.to_thread.run_sync(server.restart)
            assert server.port == port and server.pid != first_pid
            for client in (a, b):
                assert (await client.expect("stream_error"))["condition"] == "system-shutdown"
                await client.expect("disconnected")
                await client.expect("session_start")
                assert client.history.count("session_start") == 2
            a.send(b, "after the restart")
            assert (await b.expect("message"))["body"] == "after the restart"


async def _send_stanza_of(a: Peer, b: Peer, size: int) -> str:
    """Send ``a`` → ``b`` a message stanza of exactly ``size`` bytes on the wire; return its body."""
    overhead = len(str(a.xmpp.make_message(mto=b.jid, mbody="x", mtype="chat")).encode()) - 1
    body = "x" * (size - overhead)
    message = a.xmpp.make_message(mto=b.jid, mbody=body, mtype="chat")
    assert len(str(message).encode()) == size
    message.send()
    return body


async def _assert_limit(
    server: ProsodyServer, new_account: Callable[[ProsodyServer], Account], limit: int
) -> None:
    with trio.fail_after(15):
        async with (
            trio_asyncio.open_loop(),
            peers(server, new_account(server), new_account(server)) as (a, b),
        ):
            body = await _send_stanza_of(a, b, limit)
            assert (await b.expect("message"))["body"] == body
            await _send_stanza_of(a, b, limit + READ_SIZE + 1)
            error = await a.expect("stream_error")
            assert (error["condition"], error["text"]) == (
                "policy-violation",
                "XML stanza is too big",
            )
            await a.expect("disconnected")


async def test_default_stanza_size_limit_is_256_kib(
    prosody: ProsodyServer, new_account: Callable[[ProsodyServer], Account]
) -> None:
    """A 256 KiB stanza is delivered; one over 256 KiB + one 8 KiB read makes Prosody close the stream."""
    assert prosody.stanza_size_limit == DEFAULT_STANZA_SIZE_LIMIT == 256 * 1024
    await _assert_limit(prosody, new_account, DEFAULT_STANZA_SIZE_LIMIT)


async def test_configured_stanza_size_limit_is_enforced(
    prosody_factory: Callable[..., ProsodyServer], new_account: Callable[[ProsodyServer], Account]
) -> None:
    """c2s_stanza_size_limit is applied: at the limit delivered, past limit + one read refused."""
    server = prosody_factory(stanza_size_limit=32 * 1024)
    await _assert_limit(server, new_account, 32 * 1024)


def test_a_taken_port_fails_with_the_log_tail(tmp_path: Path) -> None:
    """If the port is in use, start fails at once, naming the port and quoting Prosody's log."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ProsodyError, match=f"could not listen on 127.0.0.1:{port}") as caught:
            start_prosody(tmp_path, port=port)
    assert "Failed to open server port" in str(caught.value)


def test_missing_prosody_gives_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without prosody on PATH the error is exactly the install hint."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProsodyNotInstalled) as caught:
        ProsodyServer(tmp_path)
    assert str(caught.value) == INSTALL_HINT == "prosody is not installed: apt-get install prosody"


#: Seconds the dev-server tests give the server to start and to stop before they kill it
#: (and its Prosody) and fail: a server that ignores Ctrl-C must fail the test, not hang it.
DEV_SERVER_DEADLINE = 60.0


@pytest.mark.parametrize(
    ("stop", "sigint"),
    [
        (signal.SIGINT, "inherited"),
        (signal.SIGINT, "ignored"),
        (signal.SIGTERM, "inherited"),
        (signal.SIGHUP, "inherited"),
    ],
)
def test_dev_server_runs_until_ctrl_c(tmp_path: Path, stop: signal.Signals, sigint: str) -> None:
    """`wfe xmpp-dev-server` prints where it listens and the accounts, and stops cleanly on
    Ctrl-C, Prosody with it: also when it inherited SIGINT ignored, as a command started with
    ``&`` by a non-interactive shell (a script, CI) does; and on SIGTERM and SIGHUP."""
    ignore = "signal.signal(signal.SIGINT, signal.SIG_IGN); " if sigint == "ignored" else ""
    command = [
        sys.executable,
        "-c",
        f"import signal, sys, wfe.engine.devtools.prosody as p; {ignore}sys.exit(p.main(sys.argv[1:]))",
    ]
    args = ["--dir", str(tmp_path), "--port", "0", "--user", "engine:secret"]
    process = subprocess.Popen(command + args, stdout=subprocess.PIPE, text=True)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    watchdog = threading.Timer(DEV_SERVER_DEADLINE, expire)
    watchdog.start()
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        output = "".join(lines)
        assert "account engine@wfe.localhost password secret" in output, output
        port = int(output.split("127.0.0.1:")[1].split(",")[0])
        (prosody_pid,) = _prosody_pids(tmp_path)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        process.send_signal(stop)
        rest = process.stdout.read()
        status = process.wait()
        assert not expired.is_set(), f"killed after {DEV_SERVER_DEADLINE:g} s: {stop.name} ignored"
        assert status == 0
    finally:
        watchdog.cancel()
        process.kill()
        process.communicate()
        _stop_leftover_prosody(tmp_path)
    assert rest.strip() == "stopped"
    assert not _alive(prosody_pid)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _prosody_pids(directory: Path) -> list[int]:
    """The live processes running Prosody with the config in ``directory``."""
    config = str(directory / "prosody.cfg.lua").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and config in (proc / "cmdline").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # it ended meanwhile
            continue
    return [pid for pid in pids if _alive(pid)]


def _stop_leftover_prosody(directory: Path) -> None:
    """Kill the Prosody a failed dev-server test left running from ``directory``."""
    for pid in _prosody_pids(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_stop_interrupted_by_a_second_ctrl_c_still_ends_prosody(tmp_path: Path) -> None:
    """A Ctrl-C while ``stop`` waits for Prosody to exit kills it rather than leaving it running."""
    server = start_prosody(tmp_path)
    process = server._process
    assert process is not None
    real_wait = process.wait

    def interrupted_wait(timeout: float | None = None) -> int:
        if timeout is not None:
            raise KeyboardInterrupt
        return real_wait()

    process.wait = interrupted_wait  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            server.stop()
        assert process.returncode is not None
        assert not _alive(process.pid)
    finally:
        process.kill()
        real_wait()


def test_dev_server_without_prosody_prints_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`wfe xmpp-dev-server` without Prosody exits 1 with the install hint on one line."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["--port", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"wfe xmpp-dev-server: error: {INSTALL_HINT}\n"
