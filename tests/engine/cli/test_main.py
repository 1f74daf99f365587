"""The `wfe` command against a running engine: run, status, logs, agents, kill, and errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wfe.engine.cli.demo import make_workspace

pytestmark = pytest.mark.slow


def wfe(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wfe", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def running_engine(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """A `wfe engine` process on a new workspace with one local agent (or as many as an
    indirect parameter says)."""
    config = make_workspace(tmp_path / "ws", agents=getattr(request, "param", 1))
    path = config.root / "wfe.toml"
    log = open(tmp_path / "engine.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "wfe", "engine", "--config", str(path)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        for _ in range(300):
            if (config.run_dir / "api.port").exists():
                break
            assert process.poll() is None, (tmp_path / "engine.log").read_text()
            subprocess.run(["sleep", "0.1"], check=True)
        yield path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_run_status_logs_agents_and_errors(running_engine: Path) -> None:
    """The core commands work end to end, print JSON on request, and fail in one line."""
    config = running_engine
    done = wfe(
        config,
        "run",
        "sleep_echo",
        "--rscript",
        "-p",
        "message=hello",
        "-p",
        "lines=3",
        "--wait",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "succeeded"
    job = result["job"]

    status = wfe(config, "status", job, "--json")
    detail = json.loads(status.stdout)
    assert (detail["name"], detail["state"], detail["attempt_list"][0]["exit_code"]) == (
        "sleep_echo",
        "succeeded",
        0,
    )

    logs = wfe(config, "logs", job)
    assert logs.stdout == "hello\nhello\nhello\n"

    agents = json.loads(wfe(config, "agents", "--json").stdout)
    assert [(a["name"], a["state"]) for a in agents] == [("local-1", "connected")]

    overview = wfe(config, "status")
    assert job in overview.stdout

    failing = wfe(config, "run", "sleep_echo", "--rscript", "-p", "exit_code=3", "--wait")
    assert failing.returncode == 1
    assert "failed: attempt 1 exited with code 3" in failing.stdout

    for args, message in [
        (("run", "no.such"), "unknown action 'no.such'"),
        (
            ("run", "sleep_echo", "--rscript", "-p", "seconds=soon"),
            "parameter 'seconds': 'soon' is not a number",
        ),
        (("run", "demo.survey", "-p", "files=many"), "parameter 'files': 'many' is not an integer"),
        (("status", "j999999"), "no job j999999"),
    ]:
        bad = wfe(config, *args)
        assert bad.returncode != 0
        assert bad.stderr.startswith("wfe: error: ") and message in bad.stderr, bad.stderr
        assert bad.stderr.count("\n") == 1

    # the engine is unharmed: a job still runs
    again = wfe(config, "run", "noop", "--rscript", "--wait")
    assert again.returncode == 0 and again.stdout.endswith("succeeded\n")


def test_kill_cancels_a_running_job(running_engine: Path) -> None:
    config = running_engine
    started = wfe(config, "run", "sleep_echo", "--rscript", "-p", "seconds=300")
    job = started.stdout.strip()
    for _ in range(100):
        if json.loads(wfe(config, "status", job, "--json").stdout)["state"] == "running":
            break
    killed = wfe(config, "kill", job)
    assert killed.returncode == 0, killed.stderr
    for _ in range(100):
        state = json.loads(wfe(config, "status", job, "--json").stdout)["state"]
        if state == "cancelled":
            break
    assert state == "cancelled"


def test_a_bad_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "wfe.toml"
    path.write_text("[agents]\nslots = 'two'\n")
    bad = wfe(path, "status")
    assert bad.returncode == 1
    assert bad.stderr == f"wfe: error: {path}: agents.slots: expected an integer\n"


@pytest.mark.parametrize("running_engine", [0], indirect=True)
def test_status_says_when_queued_work_has_no_agent_that_could_take_it(
    running_engine: Path,
) -> None:
    """With no agent at all, a job stays queued, and `wfe status` and /metrics say that no
    agent can take it (issue 10, finding 8)."""
    import urllib.request

    from wfe.engine.config import load_config

    ran = wfe(running_engine, "run", "--rscript", "noop")
    assert ran.returncode == 0, ran.stderr
    status = wfe(running_engine, "status")
    assert status.returncode == 0, status.stderr
    assert (
        "warning: 1 queued job(s) that no connected agent can ever take (no agent is connected)"
        in status.stdout
    )
    config = load_config(running_engine)
    port = int((config.run_dir / "api.port").read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    assert "wfe_unplaceable_jobs 1.0" in text
