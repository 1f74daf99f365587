"""Several agents in one process (``python -m wfe.agents.many``) over a real Prosody."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from wfe.agents.errors import ConfigError
from wfe.agents.many import agent_argv, main
from wfe.engine.runtime.daemon import open_engine

if TYPE_CHECKING:
    from conftest import Cluster

pytestmark = pytest.mark.xmpp


def test_agent_argv_numbers_the_per_agent_flags() -> None:
    """``{n}`` becomes the agent's number in per-agent flags (both spellings) and nowhere else."""
    argv = ["--xmpp", "--jid", "a{n}@d", "--spool=s/{n}", "--tag", "x{n}", "--workdir", "w{n}"]
    assert agent_argv(argv, 7) == [
        "--xmpp", "--jid", "a7@d", "--spool=s/7", "--tag", "x{n}", "--workdir", "w7",
    ]  # fmt: skip


def test_a_flag_every_agent_would_share_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A --spool without {n} would be one spool for all: a one-line usage error, exit 2."""
    with pytest.raises(ConfigError, match=r"--spool 's': put \{n\} in it"):
        agent_argv(["--spool", "s"], 1)
    assert main(["--count", "2", "--xmpp", "--jid", "a{n}@d", "--spool", "s"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--spool 's'" in err[0]


async def test_four_agents_in_one_process_take_work_and_are_lost_together(
    cluster: Cluster, h: Any
) -> None:
    """Four agents run by one ``wfe.agents.many`` process, started one at a time (each once the
    one before has its session), register under their own JIDs, all take part in 40 jobs, and
    when that one process is SIGKILLed the engine declares all four lost."""
    prefix, password = f"many-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    jids = [cluster.server.register(f"{prefix}-{n}", password) for n in range(1, 5)]
    home = cluster.root / "many"
    home.mkdir()
    (home / "password").write_text(password + "\n")
    (home / "password").chmod(0o600)
    command = [
        sys.executable, "-m", "wfe.agents.many", "--count", "4", "--first", "1", "--starting", "1",
        "--xmpp", "--jid", f"{prefix}-{{n}}@{cluster.server.domain}",
        "--password-file", str(home / "password"),
        "--server", cluster.server.host, "--port", str(cluster.server.port),
        "--tls", cluster.tls, "--controller", cluster.engine.jid,
        "--trusted-key", str(cluster.root / "engine.pub"), "--slots", "1",
        "--spool", str(home / "{n}" / "spool"), "--workdir", str(home / "{n}" / "work"),
        "--heartbeat", "0.5",
    ]  # fmt: skip
    config = cluster.config()
    with trio.fail_after(90), (home / "agents.log").open("ab") as log_file:
        async with open_engine(config) as engine:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                env=_env(),
            )
            try:
                await h.until(engine, lambda: sorted(h.connected(engine)) == sorted(jids))
                job_ids = [
                    await engine.run_rscript("sleep_echo", {"message": f"job {n}", "seconds": 0.1})
                    for n in range(40)
                ]
                await h.run_all(engine, job_ids)
                jobs = await h.succeeded_once(engine, job_ids)
                used = {a["agent"] for j in jobs for a in j["attempt_list"]}
                assert used == set(jids)
                os.killpg(process.pid, signal.SIGKILL)
                await h.until(
                    engine,
                    lambda: (
                        sorted(str(a["name"]) for a in engine.agents() if a["state"] == "lost")
                        == sorted(jids)
                    ),
                )
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


def _env() -> dict[str, str]:
    """The environment with this checkout importable as ``wfe`` by every child (the agents'
    keepers run with ``python -P``, from their spools)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}
