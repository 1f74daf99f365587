"""The keeper: scripts outlive a killed agent, the next agent adopts them, and a lease that
runs out kills them (fenced). Real agent processes, a real keeper, real scripts."""

from __future__ import annotations

import os
import signal
import subprocess
import types
from pathlib import Path
from typing import Any

import trio

from wfe.protocols.messages import (
    AgentHello,
    AgentStatus,
    AttemptRef,
    FinishReason,
    JobAccepted,
    JobFinished,
    Lease,
    OutputChunk,
)

from .test_main import agent_command as main_agent_command

REF = AttemptRef(job_id="job-1", attempt=1)


def agent_command(home: Path, socket_path: Path) -> list[str]:
    return main_agent_command("kept", home, socket_path, "--heartbeat", "0.2")


def gated(tmp_path: Path) -> str:
    """Records each start in ``runs``, prints ``before``, waits for ``gate``, prints ``after``."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    return (
        f"echo $$ >> {runs}\necho before\nwhile [ ! -e {gate} ]; do sleep 0.01; done\necho after\n"
    )


async def start_agent(home: Path, engine) -> trio.Process:
    return await trio.lowlevel.open_process(
        agent_command(home, engine.path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def run_gated(
    tmp_path: Path, engine, h: types.SimpleNamespace, *, lease: float | None = None
) -> tuple[trio.Process, Any, JobAccepted]:
    """Start an agent and have it run the gated script (after granting ``lease``): the agent
    process, the engine's end of its link, and the script's JobAccepted."""
    agent = await start_agent(tmp_path, engine)
    link = await engine.accept()
    hello = await h.receive(link)
    assert isinstance(hello, AgentHello)
    if lease is not None:
        await link.send(Lease(seq=hello.seq, ttl=lease))
    await link.send(h.make_dispatch(gated(tmp_path), timeout=60))
    accepted = await h.receive(link)
    assert isinstance(accepted, JobAccepted)
    return agent, link, accepted


async def kill(process: trio.Process) -> None:
    process.send_signal(signal.SIGKILL)
    await process.wait()


def keepers_of(spool: Path) -> list[int]:
    """Pids of the keeper processes of ``spool``, from their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wfe.agents.keeper" in argv and os.fsencode(spool) in argv:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_killed_agents_script_runs_on_and_the_next_agent_adopts_it(
    engine, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """SIGKILL of the agent mid-script: the script runs on; the restarted agent lists it
    running, sends the output it had not sent yet and then the result: one execution,
    every byte once, chunks numbered on without a gap."""
    first, link, accepted = await run_gated(tmp_path, engine, h)
    chunk = await h.receive(link)
    assert isinstance(chunk, OutputChunk) and chunk.data == b"before\n" and chunk.seq == 0
    await kill(first)
    assert alive(accepted.pid)
    second = await start_agent(tmp_path, engine)
    try:
        link = await engine.accept()
        hello = await h.receive(link)
        assert isinstance(hello, AgentHello) and hello.running == (REF,)
        (tmp_path / "gate").touch()
        messages, finished = await h.receive_until_finished(link)
        assert [m.seq for m in messages if isinstance(m, OutputChunk)] == [1]
        assert h.output_of(messages) == b"after\n"
        assert finished.reason is FinishReason.EXITED and finished.exit_code == 0
        assert finished.chunks == 2
        assert (tmp_path / "runs").read_text() == f"{accepted.pid}\n"
    finally:
        await kill(second)


async def test_a_script_that_ends_while_no_agent_runs_is_reported_by_the_next(
    engine, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """The script ends while its agent is dead: the keeper keeps its exit status, and the
    next agent reports the real result (exit 0 and all of its output), not a loss."""
    first, _, accepted = await run_gated(tmp_path, engine, h)
    await kill(first)
    (tmp_path / "gate").touch()
    with trio.fail_after(h.GUARD):
        while alive(accepted.pid):  # noqa: ASYNC110 - another process, polled
            await trio.sleep(0.02)
    second = await start_agent(tmp_path, engine)
    try:
        link = await engine.accept()
        hello = await h.receive(link)
        assert isinstance(hello, AgentHello)
        messages, finished = await h.receive_until_finished(link)
        assert finished.reason is FinishReason.EXITED and finished.exit_code == 0
        assert h.output_of(messages).endswith(b"after\n")  # what no agent was there to read
        assert (tmp_path / "runs").read_text() == f"{accepted.pid}\n"
    finally:
        await kill(second)


async def test_a_lease_that_runs_out_kills_the_script_and_it_is_reported_fenced(
    engine, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """The engine grants a 1 s lease on the hello and never renews it: about a second later
    the keeper kills the script's group, and the agent reports the attempt FENCED (the
    engine may then run it again: nothing of this attempt runs any more)."""
    agent, link, accepted = await run_gated(tmp_path, engine, h, lease=1.0)
    try:
        start = trio.current_time()
        _, finished = await h.receive_until_finished(link, skip=(AgentStatus, OutputChunk))
        assert isinstance(finished, JobFinished)
        assert finished.reason is FinishReason.FENCED
        assert finished.signal == signal.SIGTERM
        assert "lease ran out" in finished.detail
        assert trio.current_time() - start < 5
        assert not alive(accepted.pid)
    finally:
        await kill(agent)


async def test_a_renewed_lease_keeps_the_script_alive(
    engine, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """Leases of 1 s renewed on every heartbeat: the script runs past many of them to its end."""
    agent = await start_agent(tmp_path, engine)
    try:
        link = await engine.accept()
        hello = await h.receive(link)
        await link.send(Lease(seq=hello.seq, ttl=1.0))
        await link.send(h.make_dispatch("sleep 2.5\necho done\n", timeout=60))
        with trio.fail_after(h.GUARD):
            async for message in link.receive():
                if isinstance(message, AgentStatus):
                    await link.send(Lease(seq=message.seq, ttl=1.0))
                elif isinstance(message, JobFinished):
                    break
        assert message.reason is FinishReason.EXITED and message.exit_code == 0
    finally:
        await kill(agent)


async def test_an_agent_dead_past_its_lease_comes_back_to_report_the_attempt_fenced(
    engine, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """Agent killed, lease of 1 s: the keeper kills the orphaned script when it runs out;
    the agent started later reports the attempt FENCED, and no script process is left."""
    first, _, accepted = await run_gated(tmp_path, engine, h, lease=1.0)
    await kill(first)
    with trio.fail_after(h.GUARD):
        while alive(accepted.pid):  # noqa: ASYNC110 - another process, polled
            await trio.sleep(0.05)
    second = await start_agent(tmp_path, engine)
    try:
        link = await engine.accept()
        hello = await h.receive(link)
        assert isinstance(hello, AgentHello)
        assert REF in (*hello.running, *hello.held)
        _, finished = await h.receive_until_finished(link, skip=(AgentStatus, OutputChunk))
        assert finished.reason is FinishReason.FENCED
    finally:
        await kill(second)


def test_the_keepers_name_is_the_spool_directory_itself(tmp_path: Path) -> None:
    """The same directory by another path finds the same keeper; another directory never."""
    from wfe.agents.keeper import socket_name

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (tmp_path / "link").symlink_to(a)
    assert socket_name(tmp_path / "link") == socket_name(a)
    assert socket_name(a) != socket_name(b)


async def test_an_idle_agent_starts_no_keeper_its_first_attempt_does(
    engine, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """After its hello an agent runs no keeper (an idle agent costs one process, not two);
    its first dispatch starts one, which holds the script and gets the lease granted before
    it started: a 1 s lease never renewed ends the script as FENCED."""
    agent = await start_agent(tmp_path, engine)
    try:
        link = await engine.accept()
        hello = await h.receive(link)
        assert keepers_of(tmp_path / "spool") == []
        await link.send(Lease(seq=hello.seq, ttl=1.0))
        await link.send(h.make_dispatch(gated(tmp_path), timeout=60))
        accepted = await h.receive(link)
        assert isinstance(accepted, JobAccepted)
        assert keepers_of(tmp_path / "spool")  # (connecting would take its agent's place)
        _, finished = await h.receive_until_finished(link, skip=(AgentStatus, OutputChunk))
        assert isinstance(finished, JobFinished)
        assert finished.reason is FinishReason.FENCED and "lease ran out" in finished.detail
    finally:
        await kill(agent)
