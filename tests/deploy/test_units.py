"""The unit files of deploy/ as systemd reads them, and the commands they start.

`systemd-analyze verify` checks every directive where systemd is installed. Without it,
the command line of each unit (its ``ExecStart`` expanded with its environment file) still
runs here: the engine's against a fresh workspace until it answers and stops on the unit's
``KillSignal`` with exit 0 (which ``Restart=on-failure`` counts as a clean stop), the
agent's against a real Prosody until it is online.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from wfe.engine.devtools.prosody import start_prosody

if TYPE_CHECKING:
    from conftest import Unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = ("wfe-engine.service", "wfe-agent.service")
#: where the units expect wfe (a venv in /opt/wfe); here it is the wfe that runs these tests
INSTALLED = "/opt/wfe/bin/wfe"
HERE = [sys.executable, "-m", "wfe"]


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_finds_nothing_to_say(name: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without an error or a warning (an unknown
    or misspelt directive is only a warning, so the test reads what it prints)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    wfe = shutil.which("wfe")
    assert wfe is not None, "the wfe command is not on PATH (pip install -e .)"
    # verify also checks that ExecStart's program exists: point it at this wfe
    unit = tmp_path / name
    unit.write_text((DEPLOY / name).read_text().replace(INSTALLED, wfe))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def command(unit: Unit, env_file: str, **env: str) -> list[str]:
    """The unit's ExecStart with its environment file, run with this wfe."""
    words = unit.exec_start({**unit.environment(DEPLOY / env_file), **env})
    assert words[0] == INSTALLED
    return HERE + words[1:]


def test_exec_start_words_as_systemd_splits_them(engine_unit: Unit, agent_unit: Unit) -> None:
    """${VAR} stays one word and $VAR splits on spaces, to nothing when it is empty."""
    assert command(engine_unit, "engine.env") == [
        *HERE,
        *["engine", "--config", "/var/lib/wfe/wfe.toml"],
    ]
    assert command(
        engine_unit, "engine.env", WFE_CONFIG="/srv/a b/wfe.toml", WFE_ENGINE_ARGS="-v  -v"
    )[-4:] == ["--config", "/srv/a b/wfe.toml", "-v", "-v"]
    assert command(agent_unit, "agent.env") == [
        *HERE,
        *["agent", "--xmpp", "--config", "/etc/wfe/agent.toml"],
    ]


@pytest.mark.parametrize(
    "unit,env_file", [("engine_unit", "engine.env"), ("agent_unit", "agent.env")]
)
def test_exec_start_knows_every_argument(
    unit: str, env_file: str, request: pytest.FixtureRequest
) -> None:
    """The command with the unit's arguments is accepted by wfe's parser (`--help` after
    them exits 0; an unknown flag would exit 2)."""
    words = command(request.getfixturevalue(unit), env_file)
    done = subprocess.run([*words, "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def wait_for(
    condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    """Poll ``condition()`` while ``process`` runs; fail with its log after 60 s."""
    deadline = time.monotonic() + 60
    while not condition():
        assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()}"
        time.sleep(0.1)


@pytest.mark.slow
def test_engine_command_starts_answers_and_stops_cleanly_on_kill_signal(
    engine_unit: Unit, tmp_path: Path
) -> None:
    """The engine unit's command, on a workspace made by `wfe init`, answers `wfe status`
    and exits 0 on the unit's KillSignal."""
    workspace = tmp_path / "wfe"
    subprocess.run([*HERE, "init", str(workspace), "--port", "0", "--local", "0"], check=True)
    config = str(workspace / "wfe.toml")
    log = tmp_path / "engine.log"
    with log.open("wb") as out:
        engine = subprocess.Popen(
            command(engine_unit, "engine.env", WFE_CONFIG=config), stdout=out, stderr=out
        )
        try:
            port = workspace / "run" / "api.port"
            wait_for(port.exists, "the console port", engine, log)
            status = subprocess.run([*HERE, "status", "--config", config], capture_output=True)
            assert status.returncode == 0, status.stderr
        finally:
            engine.send_signal(signal.Signals[engine_unit.get("Service", "KillSignal")])
            assert engine.wait(timeout=60) == 0, log.read_text()


@pytest.mark.slow
@pytest.mark.xmpp
def test_agent_command_goes_online_and_stops_cleanly_on_kill_signal(
    agent_unit: Unit, tmp_path: Path
) -> None:
    """The agent unit's command with an agent.toml for a real Prosody logs in, and exits 0
    on the unit's KillSignal."""
    subprocess.run([*HERE, "init", str(tmp_path / "engine"), "--local", "0"], check=True)
    with start_prosody(tmp_path / "prosody", users={"node1": "secret"}) as server:
        (tmp_path / "agent.password").write_text("secret\n")
        (tmp_path / "agent.password").chmod(0o600)
        toml = tmp_path / "agent.toml"
        toml.write_text(
            f'jid = "{server.jid("node1")}"\npassword_file = "agent.password"\n'
            f'controllers = ["{server.jid("engine")}"]\ntrusted_key = "engine/engine.pub"\n'
            f'server = "{server.host}"\nport = {server.port}\ntls = "plain"\n'
            f'spool = "spool"\nworkdir = "work"\n'
        )
        log = tmp_path / "agent.log"
        with log.open("wb") as out:
            agent = subprocess.Popen(
                command(agent_unit, "agent.env", WFE_AGENT_CONFIG=str(toml)),
                stdout=out,
                stderr=out,
            )
            try:
                online = re.compile(rf"xmpp: {re.escape(server.jid('node1'))}/\S+ online at ")
                wait_for(lambda: bool(online.search(log.read_text())), "it online", agent, log)
            finally:
                agent.send_signal(signal.Signals[agent_unit.get("Service", "KillSignal")])
                assert agent.wait(timeout=60) == 0, log.read_text()
