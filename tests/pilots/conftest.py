"""Fixtures for pilots on a real batch system: never a fake ``sbatch``.

- ``slurm``: a private single-node Slurm with munge (``wfe.engine.devtools.slurm``) for the
  session, started from a temporary directory; the tests are skipped, with the reason, only
  when its programs are not installed (CI installs them: ``.ci/run``).
- ``prosody``: a plaintext Prosody on loopback for the session.
- ``site``: a ``Site``: a workspace whose engine serves agents over that Prosody, accounts for
  pilots, an RScript that leaves a marker file per run, and ``start_factory()``, which runs
  ``python -m wfe pilots`` as a process of its own against the engine's console with an
  operator token.

A failed test's report carries the tail of the factory's output, of every pilot's output and
of the Slurm daemons' logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from wfe.engine.devtools.prosody import ProsodyNotInstalled, ProsodyServer
from wfe.engine.devtools.slurm import SlurmCluster, missing_programs

#: The RScript the tests run: a marker file per run (``run-<uuid>``), then it waits for a file
#: ``release`` (at most ``hold`` seconds), then a marker per run that reached its end
#: (``done-<uuid>``). Counted from outside the engine's books.
MARKED = """#!/usr/bin/env python3
# wfe-rscript: 1
# name: marked
# version: 1.0
# interpreter: python3
# description: a marker file per run; wait for a release file; a marker per finished run
# timeout: 600
# param dir: str the directory of the marker files
# param hold: float = 0 seconds to wait at most for the file "release" in dir
# requires: cpus=1
import json, os, sys, time, uuid
with open(os.environ["WFE_PARAMS"]) as f:
    params = json.load(f)
run = uuid.uuid4().hex
directory = params["dir"]
open(os.path.join(directory, "run-" + run), "w").close()
deadline = time.monotonic() + params["hold"]
while time.monotonic() < deadline and not os.path.exists(os.path.join(directory, "release")):
    time.sleep(0.05)
open(os.path.join(directory, "done-" + run), "w").close()
print("done", run)
"""

REPORT_LINES = 40


def _tail(path: Path, lines: int = REPORT_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running private Slurm for the session (skipped when Slurm is not installed)."""
    missing = missing_programs()
    if missing:
        pytest.skip(f"Slurm is not installed (missing {', '.join(missing)}): {SLURM_HINT}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    with cluster:
        yield cluster


SLURM_HINT = "apt-get install slurm-wlm munge"


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """A plaintext Prosody on 127.0.0.1 shared by the session."""
    try:
        server = ProsodyServer(tmp_path_factory.mktemp("prosody"), upload=False)
    except ProsodyNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@attrs.define
class Site:
    """An engine served over XMPP, pilot accounts, and a factory process to start."""

    root: Path
    server: ProsodyServer
    slurm: SlurmCluster
    engine_jid: str
    pilots: int  # pilot accounts registered
    factories: list[Any] = attrs.Factory(list)

    @property
    def markers(self) -> Path:
        return self.root / "markers"

    @property
    def accounts(self) -> Path:
        return self.root / "accounts"

    def config(self, **sections: dict[str, Any]) -> Any:
        """Write ``wfe.toml`` (no local agents, XMPP on, a short lease) and its secrets."""
        from wfe.engine.config import load_config
        from wfe.engine.keys import create_secrets

        password = secrets.token_urlsafe(12)
        user = self.engine_jid.partition("@")[0]
        self.server.register(user, password)
        password_file = self.root / "engine.password"
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        tables: dict[str, dict[str, Any]] = {
            "engine": {"rscripts": ["rscripts"]},
            "api": {"host": "127.0.0.1", "port": 0},
            "agents": {
                "local": 0,
                "heartbeat": 0.5,
                "heartbeat_deadline": 4.0,
                "reconcile_grace": 4.0,
                "lease": 3.0,
            },
            "jobs": {"timeout": 120.0},
            "xmpp": {
                "enabled": True,
                "jid": self.engine_jid,
                "password_file": str(password_file),
                "host": self.server.host,
                "port": self.server.port,
                "tls": "plain",
                "agents": [],
            },
        }
        for name, values in sections.items():
            tables.setdefault(name, {}).update(values)
        text = "".join(
            f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
            for name, values in tables.items()
        )
        (self.root / "wfe.toml").write_text(text)
        scripts = self.root / "rscripts"
        scripts.mkdir(exist_ok=True)
        (scripts / "marked.py").write_text(MARKED)
        self.markers.mkdir(exist_ok=True)
        config = load_config(self.root / "wfe.toml")
        create_secrets(config)
        return config

    def register_pilots(self) -> None:
        """One Prosody account per pilot, its password in ``accounts/<jid>``."""
        self.accounts.mkdir(mode=0o700, exist_ok=True)
        for n in range(1, self.pilots + 1):
            user = f"pilot{n}-{secrets.token_hex(3)}"
            password = secrets.token_urlsafe(12)
            jid = self.server.register(user, password)
            path = self.accounts / jid
            path.write_text(password + "\n")
            path.chmod(0o600)

    async def start_factory(self, token: str, *options: str) -> Any:
        """Run ``python -m wfe pilots`` against the engine with ``token``; killed at the end."""
        log_path = self.root / f"factory-{len(self.factories)}.log"
        env = {**self.slurm.env, "WFE_TOKEN": token}
        command = [
            sys.executable, "-m", "wfe", "pilots", "--config", str(self.root / "wfe.toml"),
            "--accounts", str(self.accounts), "--workdir", str(self.root / "pilots"),
            "--interval", "0.5", "--heartbeat", "0.5", "--memory-mb", "256", *options,
        ]  # fmt: skip
        with log_path.open("ab") as log_file:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=env,
                start_new_session=True,
            )
        self.factories.append(process)
        return process

    async def start_agent(self, account: Path, *options: str) -> Any:
        """Run ``python -m wfe agent`` over XMPP as ``account`` (a file of ``accounts/``)."""
        home = self.root / "agents" / account.name
        home.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "wfe", "agent", "--xmpp", "--jid", account.name,
            "--password-file", str(account), "--server", self.server.host,
            "--port", str(self.server.port), "--tls", "plain",
            "--trusted-key", str(self.root / "engine.pub"), "--controller", self.engine_jid,
            "--slots", "1", "--spool", str(home / "spool"), "--workdir", str(home / "work"),
            "--heartbeat", "0.5", *options,
        ]  # fmt: skip
        with (home / "agent.log").open("ab") as log_file:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True,
            )  # fmt: skip
        self.factories.append(process)  # killed with the factories at the end
        return process

    def factory_log(self) -> str:
        return "\n".join(_tail(p) for p in sorted(self.root.glob("factory-*.log")))

    def pilot_logs(self) -> str:
        logs = [*(self.root / "pilots").glob("*/*.out"), *(self.root / "agents").glob("*/*.log")]
        parts = [f"--- {p.parent.name}/{p.name}\n{_tail(p)}" for p in sorted(logs)]
        return "\n".join(parts) or "(no pilot output)"

    async def stop_factories(self) -> None:
        for process in self.factories:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    def kill_leftovers(self) -> None:
        """SIGKILL what the pilots and agents left (a keeper outlives its batch job under
        ``proctrack/linuxproc``): the processes whose command line names this site."""
        mark = str(self.root).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if mark in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture
async def site(
    tmp_path: Path,
    slurm: SlurmCluster,
    prosody: ProsodyServer,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Site]:
    """A ``Site`` with two pilot accounts; its factories are killed and the Slurm queue
    emptied when the test ends."""
    made = Site(
        root=tmp_path,
        server=prosody,
        slurm=slurm,
        engine_jid=f"engine-{secrets.token_hex(3)}@{prosody.domain}",
        pilots=2,
    )
    made.register_pilots()
    request.node.stash[_SITE] = made
    yield made
    with trio.CancelScope(shield=True):
        await made.stop_factories()
        made.kill_leftovers()
        await trio.to_thread.run_sync(
            lambda: subprocess.run(["scancel", "--full", "--quiet", "--user=root"], env=slurm.env)
        )


_SITE = pytest.StashKey[Site]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    made = item.stash.get(_SITE, None)
    if report.failed and made is not None:
        report.sections.append(("pilot factory", made.factory_log()))
        report.sections.append(("pilots", made.pilot_logs()))
        report.sections.append(("slurm", made.slurm.log_tail(REPORT_LINES)))
    return report
