"""`wfe agent` (`python -m wfe.agents`): configuration, exit codes, and a real agent process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import trio

from wfe.agents.config import load_config
from wfe.agents.errors import ConfigError
from wfe.agents.main import main
from wfe.protocols.messages import (
    AgentHello,
    AttemptRef,
    FinishReason,
    JobAccepted,
    OutputChunk,
    Shutdown,
    Stream,
)
from wfe.protocols.signing import generate_keypair, load_private_key, sign


def test_flags_override_the_file_and_file_paths_are_relative_to_it(tmp_path: Path) -> None:
    """agent.toml supplies settings, flags win, and relative paths in the file are the file's."""
    config = tmp_path / "agent.toml"
    config.write_text(
        'name = "from-file"\nslots = 3\ntags = ["gpu", "big"]\nspool = "spool"\n'
        "heartbeat = 5\ngive_up_after = 30\n"
    )
    loaded = load_config(["--config", str(config), "--slots", "7", "--tag", "x", "--socket", "s"])
    assert loaded.name == "from-file" and loaded.slots == 7 and loaded.tags == ("x",)
    assert loaded.spool == tmp_path / "spool"
    assert loaded.socket == Path("s")
    assert loaded.heartbeat == 5.0 and loaded.give_up_after == 30.0
    assert loaded.workdir.name == "work" and "agent-from-file" in str(loaded.workdir)


def test_defaults_work_on_one_machine() -> None:
    """Without a file every setting has a default; the name comes from the host."""
    loaded = load_config(["--socket", "s"])
    assert loaded.name and loaded.slots >= 1 and loaded.site == "local"
    assert loaded.trusted_key is None and loaded.give_up_after is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("slots = ", "not valid TOML"),
        ("colour = 'blue'", "unknown key 'colour'"),
        ('slots = "many"', "slots: expected an integer, got 'many'"),
        ("tags = ['a', 1]", "tags: expected an array of strings"),
        ("heartbeat = true", "heartbeat: expected a number (seconds), got True"),
        ("slots = 0", "slots must be at least 1, not 0"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    """A bad agent.toml: exit code 2 and one line on stderr naming the problem."""
    config = tmp_path / "agent.toml"
    config.write_text(content + "\n")
    assert main(["--config", str(config), "--socket", "s"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wfe agent: ")
    assert message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "/nonexistent/agent.toml"], "/nonexistent/agent.toml: cannot read"),
        ([], "no transport: give --socket PATH"),
        (["--socket", "s", "--trusted-key", "/nonexistent.pem"], "trusted key /nonexistent.pem"),
    ],
)
def test_missing_pieces_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A missing file, transport or key: exit code 2 and one line naming it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_bad_key_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trusted key that is not a PEM public key is a configuration error."""
    key = tmp_path / "key.pem"
    key.write_bytes(generate_keypair()[0])  # a private key, not a public one
    assert main(["--socket", "s", "--trusted-key", str(key)]) == 2
    assert "not a PEM public key" in capsys.readouterr().err


def test_usage_errors_exit_2() -> None:
    """argparse errors come back as exit code 2 instead of raising SystemExit."""
    assert main(["--slots", "many"]) == 2


def test_config_error_is_a_value_error() -> None:
    """ConfigError can be caught as ValueError by callers that do not know agents."""
    with pytest.raises(ValueError, match="slots must be at least 1"):
        load_config(["--slots", "0"])
    assert issubclass(ConfigError, ValueError)


def agent_command(name: str, home: Path, socket_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wfe.agents",
        "--name",
        name,
        "--socket",
        str(socket_path),
        "--spool",
        str(home / "spool"),
        "--workdir",
        str(home / "work"),
        *extra,
    ]


async def test_an_agent_process_runs_a_signed_script_and_shuts_down(
    engine, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """The real command: hello, a signed dispatch runs, Shutdown makes it exit 0."""
    private_pem, public_pem = generate_keypair()
    (tmp_path / "key.pub").write_bytes(public_pem)
    command = agent_command(
        "e2e", tmp_path, engine.path, "--trusted-key", str(tmp_path / "key.pub"), "--tag", "x"
    )
    log = await trio.open_file(tmp_path / "agent.log", "wb")
    async with log:
        process = await trio.lowlevel.open_process(command, stdout=log.wrapped, stderr=log.wrapped)
    try:
        link = await engine.accept()
        hello = await h.receive(link)
        assert isinstance(hello, AgentHello) and hello.name == "e2e"
        assert hello.capabilities.tags == ("x",)
        dispatch = h.make_dispatch("echo hello from $WFE_JOB_ID\n")
        await link.send(sign(dispatch, load_private_key(private_pem)))
        seen, finished = await h.receive_until_finished(link)
        assert h.output_of(seen, Stream.STDOUT) == b"hello from job-1\n"
        assert finished.exit_code == 0
        await link.send(Shutdown(reason="test over"))
        with trio.fail_after(h.GUARD):
            assert await process.wait() == 0
    finally:
        process.kill()
        await process.wait()
    log_text = await trio.Path(tmp_path / "agent.log").read_text()
    assert "agent e2e INFO" in log_text and "shut down" in log_text


async def test_sigterm_leaves_the_script_to_the_keeper_and_the_next_agent_adopts_it(
    engine, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """SIGTERM: the agent exits 0 at once and its running script runs on under the keeper;
    the agent started next on the same spool lists it running in its hello, reads the rest
    of its output, and reports its result: one execution, nothing lost."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    script = f"echo started >> {runs}\necho before\nwhile [ ! -e {gate} ]; do sleep 0.01; done\necho after\n"
    first = await trio.lowlevel.open_process(
        agent_command("term", tmp_path, engine.path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        link = await engine.accept()
        await h.receive(link)
        await link.send(h.make_dispatch(script))
        accepted = await h.receive(link)
        assert isinstance(accepted, JobAccepted)
        chunk = await h.receive(link)
        assert isinstance(chunk, OutputChunk) and chunk.data == b"before\n"
        first.send_signal(signal.SIGTERM)
        with trio.fail_after(h.GUARD):
            assert await first.wait() == 0
    finally:
        first.kill()
        await first.wait()
    assert not h.is_dead(accepted.pid)  # the script runs on
    second = await trio.lowlevel.open_process(
        agent_command("term", tmp_path, engine.path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        link = await engine.accept()
        hello = await h.receive(link)
        assert isinstance(hello, AgentHello)
        assert hello.running == (AttemptRef(job_id="job-1", attempt=1),)
        gate.touch()
        messages, finished = await h.receive_until_finished(link)
        assert finished.reason is FinishReason.EXITED and finished.exit_code == 0
        assert h.output_of(messages) == b"after\n" and finished.chunks == 2
        assert runs.read_text() == "started\n"
    finally:
        second.kill()
        await second.wait()


async def test_an_agent_without_an_engine_gives_up_with_exit_1(
    short_dir: Path, tmp_path: Path
) -> None:
    """--give-up-after: no engine for that long means exit code 1."""
    with trio.fail_after(30):
        done = await trio.run_process(
            agent_command("alone", tmp_path, short_dir / "none.sock", "--give-up-after", "0.2"),
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 1
    assert b"giving up" in done.stderr


def test_python_dash_m_agents_shows_help() -> None:
    """`python -m wfe.agents --help` works and names the flags."""
    done = subprocess.run(
        [sys.executable, "-m", "wfe.agents", "--help"],
        capture_output=True,
        check=False,
        env={**os.environ},
        timeout=30,
    )
    assert done.returncode == 0
    for flag in ("--socket", "--slots", "--spool", "--trusted-key", "--give-up-after", "--config"):
        assert flag.encode() in done.stdout
