"""Fixtures that run a real Prosody on loopback: never a fake server.

- ``prosody``: a plaintext server for the whole session (PLAIN auth over loopback).
- ``prosody_tls``: a server for the whole session that requires STARTTLS with a certificate
  signed by a generated CA (``prosody_tls.ca_path``).
- ``new_account(server)``: registers a fresh account on a server, so tests never share one.
- ``prosody_factory(**options)``: a server of the test's own (its own port, data and options,
  e.g. ``stanza_size_limit``), stopped when the test ends; use it to restart or to break things.
- ``cluster`` / ``cluster_factory(server)``: a workspace whose engine serves agents over XMPP
  (``Cluster.config()``), real ``python -m wfe.agents --xmpp`` processes (``start_agent``), killed
  when the test ends; ``h``: helpers that wait on the engine's committed events.

A missing Prosody fails these fixtures with the install hint rather than skipping: CI installs it.

When a test fails, its report carries what the engine logged (``wfe`` at INFO, as captured
log), the tail of every agent's log and of every private Prosody's log: enough to tell what
happened in a run that cannot be repeated.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from wfe.engine.devtools.prosody import ProsodyNotInstalled, ProsodyServer


@attrs.frozen(kw_only=True)
class Account:
    """An account registered on a test Prosody."""

    user: str
    jid: str
    password: str


def _start(directory: Path, **options: Any) -> ProsodyServer:
    try:
        server = ProsodyServer(directory, **options)
    except ProsodyNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    server.start()
    return server


#: Per test: callables that give (title, text) sections for the report of a failure.
_DIAGNOSTICS = pytest.StashKey[list[Callable[[], list[tuple[str, str]]]]]()
#: Lines of each log shown in the report of a failed test.
REPORT_LINES = 60


def _diagnose(
    request: pytest.FixtureRequest, sections: Callable[[], list[tuple[str, str]]]
) -> None:
    """Add ``sections()`` to the report of the test being set up, should it fail."""
    request.node.stash.setdefault(_DIAGNOSTICS, []).append(sections)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for sections in item.stash.get(_DIAGNOSTICS, []):
            try:
                report.sections.extend(sections())
            except Exception as exc:  # a diagnostic must not hide the failure
                report.sections.append(("diagnostics", f"could not collect: {exc!r}"))
    return report


@pytest.fixture(autouse=True)
def _engine_log_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the engine's INFO lines: a failed test's report shows them."""
    caplog.set_level(logging.INFO, logger="wfe")


def _tail(text: str, lines: int = REPORT_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """A plaintext Prosody on 127.0.0.1 shared by the session; register accounts per test."""
    server = _start(tmp_path_factory.mktemp("prosody"))
    with server:
        yield server


@pytest.fixture(scope="session")
def prosody_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """A Prosody that requires STARTTLS; clients verify it against ``prosody_tls.ca_path``."""
    server = _start(tmp_path_factory.mktemp("prosody-tls"), tls=True)
    with server:
        yield server


@pytest.fixture
def prosody_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ProsodyServer]]:
    """Start servers private to one test, with :class:`ProsodyServer` options; all stop after it."""
    servers: list[ProsodyServer] = []
    _diagnose(
        request,
        lambda: [(f"prosody {s.port}", s.log_tail(REPORT_LINES)) for s in servers],
    )

    def start(**options: Any) -> ProsodyServer:
        server = _start(tmp_path / f"prosody-{len(servers)}", **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


_account_numbers = itertools.count(1)


@pytest.fixture
def new_account() -> Callable[[ProsodyServer], Account]:
    """``new_account(server)`` registers a never-used account (random password) and returns it."""

    def register(server: ProsodyServer) -> Account:
        user = f"user{next(_account_numbers)}-{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(12)
        return Account(user=user, jid=server.register(user, password), password=password)

    return register


# --- engines and agents over XMPP (added for the XMPP transport tests) ----------------------------


@attrs.define
class Cluster:
    """A workspace whose engine serves agents over a test Prosody, and real agent processes.

    ``config()`` writes ``wfe.toml`` (no local agents, ``[xmpp]`` enabled) and the secrets;
    ``start_agent(account)`` runs ``python -m wfe.agents --xmpp ...`` in its own session. Every
    agent process is killed when the test ends; ``log(name)`` shows what one wrote.
    """

    server: ProsodyServer
    root: Path
    engine: Account
    new_account: Callable[[ProsodyServer], Account]
    processes: dict[str, Any] = attrs.Factory(dict)
    accounts: dict[str, Account] = attrs.Factory(dict)

    @property
    def tls(self) -> str:
        return "starttls" if self.server.tls else "plain"

    def write_password(self, account: Account) -> Path:
        path = self.root / "passwords" / account.user
        path.parent.mkdir(exist_ok=True, mode=0o700)
        path.write_text(account.password + "\n")
        path.chmod(0o600)
        return path

    def config(self, *, xmpp_agents: list[str] | None = None, **sections: dict[str, Any]) -> Any:
        from wfe.engine.config import load_config
        from wfe.engine.keys import create_secrets

        tables: dict[str, dict[str, Any]] = {
            "agents": {
                "local": 0,
                "heartbeat": 0.5,
                "heartbeat_deadline": 5.0,
                "reconcile_grace": 5.0,
            },
            "jobs": {"timeout": 60.0},
            "xmpp": {
                "enabled": True,
                "jid": self.engine.jid,
                "password_file": str(self.write_password(self.engine)),
                "host": self.server.host,
                "port": self.server.port,
                "tls": self.tls,
                "agents": xmpp_agents or [],
            },
        }
        if self.server.ca_path is not None:
            tables["xmpp"]["ca_file"] = str(self.server.ca_path)
        for name, values in sections.items():
            tables.setdefault(name, {}).update(values)
        lines = []
        for name, values in tables.items():
            lines.append(f"[{name}]")
            lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
        path = self.root / "wfe.toml"
        path.write_text("\n".join(lines) + "\n")
        config = load_config(path)
        create_secrets(config)
        return config

    def agent_command(
        self, account: Account, *extra: str, slots: int = 4, controllers: tuple[str, ...] = ()
    ) -> list[str]:
        home = self.root / "agents" / account.user
        command = [
            sys.executable,
            "-m",
            "wfe.agents",
            "--xmpp",
            "--jid",
            account.jid,
            "--password-file",
            str(self.write_password(account)),
            "--server",
            self.server.host,
            "--port",
            str(self.server.port),
            "--tls",
            self.tls,
            "--trusted-key",
            str(self.root / "engine.pub"),
            "--slots",
            str(slots),
            "--spool",
            str(home / "spool"),
            "--workdir",
            str(home / "work"),
            "--heartbeat",
            "0.5",
        ]
        for controller in controllers or (self.engine.jid,):
            command += ["--controller", controller]
        if self.server.ca_path is not None:
            command += ["--ca-file", str(self.server.ca_path)]
        return command + list(extra)

    async def start_agent(
        self,
        account: Account | None = None,
        *extra: str,
        slots: int = 4,
        controllers: tuple[str, ...] = (),
    ) -> Account:
        """Start an agent process (a new account unless given); return its account.

        It obeys ``controllers`` (default: the engine's JID) and trusts ``root/engine.pub``.
        """
        account = account or self.new_account(self.server)
        log_path = self.root / "agents" / f"{account.user}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")  # noqa: ASYNC230 - a local file, opened once
        try:
            process = await trio.lowlevel.open_process(
                self.agent_command(account, *extra, slots=slots, controllers=controllers),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        finally:
            log_file.close()
        self.processes[account.jid] = process
        self.accounts[account.jid] = account
        return account

    def settings(self, account: Account, **options: Any) -> Any:
        """``XmppSettings`` for a test-side client logged in as ``account``."""
        return client_settings(self.server, account, tls=self.tls, **options)

    def kill(self, jid: str) -> None:
        """SIGKILL an agent's whole process group (the agent and the scripts it runs)."""
        process = self.processes[jid]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def log(self, account: Account) -> str:
        path = self.root / "agents" / f"{account.user}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def kill_all(self) -> None:
        """Kill every agent process group and reap the agents."""
        for jid, process in self.processes.items():
            self.kill(jid)
            await process.wait()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # strings, numbers and lists of strings are the same in TOML


@pytest.fixture
async def cluster_factory(
    tmp_path: Path, new_account: Callable[[ProsodyServer], Account], request: pytest.FixtureRequest
) -> AsyncIterator[Callable[[ProsodyServer], Cluster]]:
    """``cluster_factory(server)``: a ``Cluster`` on ``server``; its agents die with the test."""
    clusters: list[Cluster] = []
    _diagnose(
        request,
        lambda: [
            (f"agent {account.user}", _tail(cluster.log(account)))
            for cluster in clusters
            for account in cluster.accounts.values()
        ],
    )

    def make(server: ProsodyServer) -> Cluster:
        root = tmp_path / f"cluster-{len(clusters)}"
        root.mkdir()
        cluster = Cluster(
            server=server, root=root, engine=new_account(server), new_account=new_account
        )
        clusters.append(cluster)
        return cluster

    yield make
    with trio.CancelScope(shield=True):
        for cluster in clusters:
            await cluster.kill_all()


@pytest.fixture
def cluster(prosody: ProsodyServer, cluster_factory: Callable[[ProsodyServer], Cluster]) -> Cluster:
    """A ``Cluster`` on the shared plaintext Prosody."""
    return cluster_factory(prosody)


# --- helpers for tests that drive an engine (the ``h`` fixture) -----------------------------------


async def until(engine: Any, predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds, checking it after every committed event."""
    async with engine.repo.subscribe() as events:
        while not predicate():
            await events.__anext__()


def connected(engine: Any) -> list[str]:
    """Names of the agents connected over XMPP."""
    return [
        a["name"] for a in engine.agents() if a["state"] == "connected" and a["transport"] == "xmpp"
    ]


TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


async def run_all(engine: Any, job_ids: list[str]) -> None:
    """Wait until the end of every job is committed (read from the event stream, which
    cannot miss an end the way waiting on a root job's completion can)."""
    from wfe.engine.repository import Missed

    pending = set(job_ids)
    async with engine.repo.subscribe(max_buffer=1_000_000) as events:

        async def reread() -> None:
            for job_id in list(pending):
                if (await engine.job(job_id))["state"] in TERMINAL:
                    pending.discard(job_id)

        await reread()
        while pending:
            event = await events.__anext__()
            if isinstance(event, Missed):
                await reread()
            elif event.kind == "job.state" and event.data.get("state") in TERMINAL:
                pending.discard(event.subject)


async def succeeded_once(engine: Any, job_ids: list[str]) -> list[dict[str, Any]]:
    """Assert every job succeeded with exactly one succeeded attempt; return their details."""
    details = []
    for job_id in job_ids:
        job = await engine.job(job_id)
        states = [a["state"] for a in job["attempt_list"]]
        assert job["state"] == "succeeded", (job_id, job["error"], states)
        assert states.count("succeeded") == 1, (job_id, states)
        details.append(job)
    return details


@pytest.fixture
def h() -> Any:
    """Helpers: ``until(engine, predicate)``, ``connected(engine)``, ``run_all(engine, ids)``,
    ``succeeded_once(engine, ids)``."""
    import types

    return types.SimpleNamespace(
        until=until, connected=connected, run_all=run_all, succeeded_once=succeeded_once
    )


def client_settings(server: ProsodyServer, account: Account, **options: Any) -> Any:
    """``XmppSettings`` for a test-side client of ``server`` logged in as ``account``."""
    from wfe.links.xmpp import XmppSettings

    options.setdefault("tls", "starttls" if server.tls else "plain")
    return XmppSettings(
        jid=account.jid,
        password=account.password,
        host=server.host,
        port=server.port,
        ca_file=server.ca_path,
        **options,
    )
