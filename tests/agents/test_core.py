"""The agent core against a tiny engine on a real Unix socket, running real scripts."""

from __future__ import annotations

import signal
from pathlib import Path

import attrs
import pytest
import trio

from wfe.agents import __version__
from wfe.agents.core import Agent, AgentExit
from wfe.agents.spool import Spool
from wfe.links.stream import open_local_link
from wfe.protocols.messages import (
    Ack,
    AgentHello,
    AgentStatus,
    AttemptRef,
    Cancel,
    Capabilities,
    FinishReason,
    JobAccepted,
    JobFinished,
    JobRefused,
    OutputChunk,
    Resume,
    Shutdown,
    StatusRequest,
    Stream,
)
from wfe.protocols.signing import generate_keypair, load_private_key, load_public_key, sign

REF = AttemptRef(job_id="job-1", attempt=1)


def gated(gate: Path, log: Path, *, before: str = "", after: str = "") -> str:
    """A script that records its start in ``log`` and waits for ``gate`` to exist."""
    return f"echo started >> {log}\n{before}while [ ! -e {gate} ]; do sleep 0.01; done\n{after}"


async def connect(engine, h) -> tuple[object, AgentHello]:
    link = await engine.accept()
    hello = await h.receive(link)
    assert isinstance(hello, AgentHello)
    return link, hello


async def test_hello_announces_name_capabilities_and_nothing_held(agents, engine, h) -> None:
    """On connecting the agent first says who it is and what it offers."""
    agents.start(agents.build())
    _, hello = await connect(engine, h)
    assert hello == AgentHello(
        name="test-agent",
        software=__version__,
        capabilities=Capabilities(slots=2, memory=1 << 30, site="here", tags=("t",)),
        seq=1,
    )


async def test_a_dispatch_is_accepted_streamed_spooled_and_finished(agents, engine, h) -> None:
    """Dispatch gives JobAccepted, then output chunks, then JobFinished, which is spooled."""
    agent = agents.build()
    agents.start(agent)
    link, _ = await connect(engine, h)
    script = 'echo one\necho two >&2\necho \'{"ok": true}\' > "$WFE_RESULT"\n'
    await link.send(h.make_dispatch(script))
    seen, finished = await h.receive_until_finished(link)
    accepted, *chunks = seen
    assert isinstance(accepted, JobAccepted) and accepted.pid is not None
    assert all(isinstance(c, OutputChunk) for c in chunks)
    assert h.output_of(chunks, Stream.STDOUT) == b"one\n"
    assert h.output_of(chunks, Stream.STDERR) == b"two\n"
    assert finished.reason is FinishReason.EXITED and finished.exit_code == 0
    assert finished.result == {"ok": True} and finished.chunks == len(chunks)
    assert agent.spool.get("job-1", 1) == finished
    assert h.is_dead(accepted.pid)


async def test_a_redelivered_dispatch_returns_the_stored_result_without_running(
    agents, engine, h, tmp_path: Path
) -> None:
    """The same (job, attempt) again: its stored JobFinished is sent, the script does not rerun."""
    agents.start(agents.build())
    link, _ = await connect(engine, h)
    runs = tmp_path / "runs"
    dispatch = h.make_dispatch(f"echo ran >> {runs}\necho output\n")
    await link.send(dispatch)
    _, first = await h.receive_until_finished(link)
    await link.send(dispatch)
    await link.send(StatusRequest())
    assert await h.receive(link, skip=()) == first
    status = await h.receive(link, skip=())
    assert isinstance(status, AgentStatus) and status.held == (REF,)
    assert runs.read_text() == "ran\n"


async def test_a_duplicate_dispatch_while_running_is_ignored(
    agents, engine, h, tmp_path: Path
) -> None:
    """A second Dispatch of a running attempt gets no answer and starts nothing."""
    agents.start(agents.build())
    link, _ = await connect(engine, h)
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    dispatch = h.make_dispatch(gated(gate, runs))
    await link.send(dispatch)
    assert isinstance(await h.receive(link), JobAccepted)
    await link.send(dispatch)
    await link.send(StatusRequest())
    status = await h.receive(link, skip=())
    assert isinstance(status, AgentStatus)
    assert status.running == (REF,) and status.free_slots == 1
    gate.touch()
    seen, finished = await h.receive_until_finished(link)
    assert seen == [] and finished.exit_code == 0
    assert runs.read_text() == "started\n"


async def test_signatures_are_checked_when_a_key_is_trusted(agents, engine, h) -> None:
    """Unsigned, wrongly signed or altered dispatches are refused; a good one runs."""
    private_pem, public_pem = generate_keypair()
    other_pem, _ = generate_keypair()
    agents.start(agents.build(trusted_key=load_public_key(public_pem)))
    link, _ = await connect(engine, h)
    dispatch = h.make_dispatch("echo hi\n")
    signed = sign(dispatch, load_private_key(private_pem))
    bad = {
        "is unsigned": dispatch,
        "signature does not verify": sign(dispatch, load_private_key(other_pem)),
        "does not verify": attrs.evolve(signed, params={"sneaky": True}),
        "script sha256 does not match": attrs.evolve(signed, script="rm -rf /\n"),
    }
    for reason, message in bad.items():
        await link.send(message)
        refused = await h.receive(link)
        assert isinstance(refused, JobRefused) and refused.job_id == "job-1"
        assert reason in refused.reason
    await link.send(signed)
    assert isinstance(await h.receive(link), JobAccepted)
    _, finished = await h.receive_until_finished(link)
    assert finished.exit_code == 0


async def test_without_a_key_the_script_digest_is_still_checked(agents, engine, h) -> None:
    """A script that does not match its sha256 is refused even without a trusted key."""
    agents.start(agents.build())
    link, _ = await connect(engine, h)
    await link.send(attrs.evolve(h.make_dispatch("echo hi\n"), script="echo bye\n"))
    refused = await h.receive(link)
    assert isinstance(refused, JobRefused) and "sha256 does not match" in refused.reason


async def test_no_free_slot_or_too_little_memory_is_refused(
    agents, engine, h, tmp_path: Path
) -> None:
    """With every slot busy, or a memory limit above what is offered, the agent refuses."""
    agents.start(agents.build(capabilities=Capabilities(slots=1, memory=1 << 30)))
    link, _ = await connect(engine, h)
    gate = tmp_path / "gate"
    await link.send(h.make_dispatch(gated(gate, tmp_path / "runs")))
    assert isinstance(await h.receive(link), JobAccepted)
    await link.send(h.make_dispatch("true\n", job_id="job-2"))
    refused = await h.receive(link)
    assert isinstance(refused, JobRefused) and refused.reason == "no free slot: all 1 busy"
    gate.touch()
    await h.receive_until_finished(link)
    await link.send(h.make_dispatch("true\n", job_id="job-3", memory=2 << 30))
    refused = await h.receive(link)
    assert isinstance(refused, JobRefused)
    assert refused.reason == f"needs {2 << 30} bytes of memory; this agent offers {1 << 30}"


async def test_a_script_that_cannot_start_finishes_with_error_and_no_accept(
    agents, engine, h
) -> None:
    """An unknown interpreter: JobFinished(ERROR) saying why, without JobAccepted."""
    agents.start(agents.build())
    link, _ = await connect(engine, h)
    await link.send(h.make_dispatch("# interpreter: no-such-shell\n"))
    finished = await h.receive(link)
    assert isinstance(finished, JobFinished) and finished.reason is FinishReason.ERROR
    assert "no-such-shell" in finished.detail


async def test_ack_drops_the_result_from_the_spool(agents, engine, h) -> None:
    """After Ack the result and its output are gone; the next hello no longer lists it."""
    agent = agents.build()
    agents.start(agent)
    link, _ = await connect(engine, h)
    await link.send(h.make_dispatch("echo hi\n"))
    await h.receive_until_finished(link)
    await link.send(Ack(job_id="job-1", attempt=1))
    await link.send(StatusRequest())
    status = await h.receive(link, skip=())
    assert isinstance(status, AgentStatus) and status.held == ()
    assert agent.spool.get("job-1", 1) is None
    assert agent.spool.open_output("job-1", 1) is None


async def test_a_result_finished_while_disconnected_is_delivered_after_reconnect(
    agents, engine, h, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The link drops mid-run: the script goes on, its result is spooled, then sent on reconnect."""
    agent = agents.build()
    agents.start(agent)
    link, _ = await connect(engine, h)
    gate = tmp_path / "gate"
    await link.send(h.make_dispatch(gated(gate, tmp_path / "runs", after="echo after\n")))
    assert isinstance(await h.receive(link), JobAccepted)
    engine.stop_listening()
    await link.aclose()
    gate.touch()
    with trio.fail_after(h.GUARD):
        await agent.spool.stored.wait()
    stored = agent.spool.get("job-1", 1)
    assert stored.exit_code == 0 and stored.chunks == 1

    await nursery.start(engine.listen)
    link, hello = await connect(engine, h)
    assert hello.running == () and hello.held == (REF,)
    assert await h.receive(link) == stored
    await link.send(Resume(job_id="job-1", attempt=1, next_seq=0))
    chunk = await h.receive(link)
    assert isinstance(chunk, OutputChunk) and (chunk.seq, chunk.data) == (0, b"after\n")


async def test_a_running_attempt_survives_a_dropped_link(agents, engine, h, tmp_path: Path) -> None:
    """After a reconnect the hello lists the attempt as running; its result comes on the new link."""
    agents.start(agents.build())
    link, _ = await connect(engine, h)
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    await link.send(h.make_dispatch(gated(gate, runs, after="echo after\n")))
    assert isinstance(await h.receive(link), JobAccepted)
    await link.aclose()
    link, hello = await connect(engine, h)
    assert hello.running == (REF,) and hello.held == ()
    gate.touch()
    seen, finished = await h.receive_until_finished(link)
    assert h.output_of(seen) == b"after\n" and finished.exit_code == 0
    assert runs.read_text() == "started\n"


async def test_resume_replays_output_from_next_seq(agents, engine, h) -> None:
    """Resume sends again the stored chunks from next_seq on, unchanged."""
    agents.start(agents.build())
    link, _ = await connect(engine, h)
    script = "# interpreter: python3\nimport sys\nfor i in range(4):\n    print(i, file=[sys.stdout, sys.stderr][i % 2], flush=True)\n"
    await link.send(h.make_dispatch(script))
    seen, finished = await h.receive_until_finished(link)
    chunks = [m for m in seen if isinstance(m, OutputChunk)]
    assert len(chunks) >= 2 and finished.chunks == len(chunks)
    await link.send(Resume(job_id="job-1", attempt=1, next_seq=1))
    replayed = [await h.receive(link) for _ in chunks[1:]]
    assert replayed == chunks[1:]


async def test_resume_of_a_running_attempt_keeps_the_order(
    agents, engine, h, tmp_path: Path
) -> None:
    """A replay while the script runs comes whole, before the script's later output."""
    agents.start(agents.build())
    link, _ = await connect(engine, h)
    gate = tmp_path / "gate"
    await link.send(
        h.make_dispatch(
            gated(gate, tmp_path / "runs", before="echo before\n", after="echo after\n")
        )
    )
    assert isinstance(await h.receive(link), JobAccepted)
    first = await h.receive(link)
    await link.send(Resume(job_id="job-1", attempt=1, next_seq=0))
    assert await h.receive(link) == first
    gate.touch()
    seen, finished = await h.receive_until_finished(link)
    assert [(c.seq, c.data) for c in seen] == [(1, b"after\n")]
    assert finished.chunks == 2


async def test_status_is_sent_every_heartbeat(agents, engine, h) -> None:
    """Without being asked, the agent sends AgentStatus every heartbeat interval."""
    agents.start(agents.build(heartbeat=0.05))
    link, _ = await connect(engine, h)
    start = trio.current_time()
    for seq in range(2, 5):  # numbered on from the hello's 1, for the engine's Lease
        status = await h.receive(link, skip=())
        assert status == AgentStatus(name="test-agent", free_slots=2, seq=seq)
    assert trio.current_time() - start >= 2 * 0.05


async def test_cancel_kills_the_attempt(agents, engine, h, tmp_path: Path) -> None:
    """Cancel ends a running attempt with reason CANCELLED and its reason in the detail."""
    agents.start(agents.build())
    link, _ = await connect(engine, h)
    await link.send(h.make_dispatch(gated(tmp_path / "gate", tmp_path / "runs")))
    accepted = await h.receive(link)
    await link.send(Cancel(job_id="job-1", attempt=1, reason="operator"))
    _, finished = await h.receive_until_finished(link)
    assert finished.reason is FinishReason.CANCELLED and finished.signal == signal.SIGTERM
    assert finished.detail == "cancelled: operator"
    assert h.is_dead(accepted.pid)


async def test_shutdown_cancels_reports_and_stops(agents, engine, h, tmp_path: Path) -> None:
    """Shutdown: running attempts are killed, their results sent, and run() returns."""
    agents.start(agents.build())
    link, _ = await connect(engine, h)
    await link.send(h.make_dispatch(gated(tmp_path / "gate", tmp_path / "runs")))
    assert isinstance(await h.receive(link), JobAccepted)
    await link.send(Shutdown(reason="engine stopping"))
    _, finished = await h.receive_until_finished(link)
    assert finished.reason is FinishReason.CANCELLED
    assert finished.detail == "cancelled: shutdown: engine stopping"
    with trio.fail_after(h.GUARD):
        await agents.done.wait()
        async for message in link.receive():
            assert isinstance(message, AgentStatus)
    assert agents.outcome is AgentExit.SHUTDOWN


async def test_stop_refuses_new_work_and_leaves_what_runs_to_the_keeper(
    agents, engine, h, tmp_path: Path
) -> None:
    """Agent.stop(): new work is refused and run() returns STOPPED without killing the
    running script, which the keeper holds for the next agent; its slot's result is not
    spooled as cancelled."""
    agent = agents.build()
    agents.start(agent)
    link, _ = await connect(engine, h)
    await link.send(h.make_dispatch(gated(tmp_path / "gate", tmp_path / "runs")))
    accepted = await h.receive(link)
    assert isinstance(accepted, JobAccepted)
    agent.stop()
    await link.send(h.make_dispatch("true\n", job_id="late"))
    with trio.fail_after(h.GUARD):
        await agents.done.wait()
    assert agents.outcome is AgentExit.STOPPED
    assert agent.spool.get("job-1", 1) is None
    assert not h.is_dead(accepted.pid)
    (tmp_path / "gate").touch()


async def test_an_attempt_lost_with_the_agent_is_reported_after_restart(agents, engine, h) -> None:
    """Output begun, no result in the spool and no keeper holding it: the restarted agent
    reports it FENCED (it cannot run on; the engine may run it again)."""
    spool = Spool(agents.spool_path)
    await spool.begin_output("lost-job", 4)
    agents.start(agents.build(spool=spool))
    link, hello = await connect(engine, h)
    assert hello.held == (AttemptRef(job_id="lost-job", attempt=4),)
    finished = await h.receive(link)
    assert isinstance(finished, JobFinished) and finished.reason is FinishReason.FENCED


async def test_messages_meant_for_the_engine_are_ignored(agents, engine, h) -> None:
    """A message of the wrong direction is logged and the session goes on."""
    agents.start(agents.build())
    link, _ = await connect(engine, h)
    await link.send(JobAccepted(job_id="x", attempt=1))
    await link.send(StatusRequest())
    assert isinstance(await h.receive(link, skip=()), AgentStatus)


async def test_an_agent_gives_up_without_an_engine(
    tmp_path: Path, short_dir: Path, autojump_clock
) -> None:
    """With give_up_after, an agent that cannot connect returns GAVE_UP at that deadline."""
    agent = Agent(
        name="lonely",
        capabilities=Capabilities(slots=1),
        spool=Spool(tmp_path / "spool"),
        workdir=tmp_path / "work",
    )
    start = trio.current_time()
    outcome = await agent.run(
        lambda: open_local_link(short_dir / "nobody.sock"), reconnect_delay=0.5, give_up_after=10
    )
    assert outcome is AgentExit.GAVE_UP
    assert trio.current_time() - start == 10


async def test_serve_needs_an_open_agent(tmp_path: Path) -> None:
    """serve() outside open() is a programming error, said plainly."""
    agent = Agent(
        name="a", capabilities=Capabilities(slots=1), spool=Spool(tmp_path), workdir=tmp_path
    )
    with pytest.raises(RuntimeError, match="inside `async with agent.open"):
        await agent.serve(None)


class RecordingLink:
    """A Link in memory that records each write: one message, or a send_many batch."""

    def __init__(self) -> None:
        self.to_agent, self._incoming = trio.open_memory_channel[object](16)
        self.writes: list[list[object]] = []
        self.changed = trio.Event()

    async def send(self, message: object) -> None:
        self._record([message])

    async def send_many(self, messages: list[object]) -> None:
        self._record(list(messages))

    def _record(self, messages: list[object]) -> None:
        self.writes.append(messages)
        self.changed.set()
        self.changed = trio.Event()

    def receive(self) -> object:
        return self._incoming

    async def wait_for(self, kind: type, count: int = 1) -> None:
        with trio.fail_after(10):
            while sum(isinstance(m, kind) for w in self.writes for m in w) < count:
                await self.changed.wait()


async def serve_recorded(agents, nursery, **kwargs: object) -> RecordingLink:
    agent = agents.build(**kwargs)
    link = RecordingLink()

    async def run() -> None:
        async with agent.open():
            await agent.serve(link)

    nursery.start_soon(run)
    await link.wait_for(AgentHello)
    return link


async def test_a_short_attempt_is_accepted_and_finished_in_one_write(agents, nursery, h) -> None:
    """A script that ends within accept_after: JobAccepted and JobFinished leave together."""
    link = await serve_recorded(agents, nursery, accept_after=5.0)
    await link.to_agent.send(h.make_dispatch("true\n"))
    await link.wait_for(JobFinished)
    [hello], [accepted, finished] = link.writes
    assert isinstance(accepted, JobAccepted) and accepted.pid is not None
    assert isinstance(finished, JobFinished) and finished.exit_code == 0
    await link.to_agent.send(Shutdown())


async def test_a_longer_attempt_is_accepted_while_it_runs(
    agents, nursery, h, tmp_path: Path
) -> None:
    """Past accept_after, JobAccepted goes out on its own while the script still runs."""
    gate = tmp_path / "gate"
    link = await serve_recorded(agents, nursery, accept_after=0.01)
    await link.to_agent.send(h.make_dispatch(gated(gate, tmp_path / "log")))
    await link.wait_for(JobAccepted)
    assert not gate.exists()
    gate.touch()
    await link.wait_for(JobFinished)
    [hello], [accepted], [finished] = link.writes
    assert isinstance(accepted, JobAccepted) and isinstance(finished, JobFinished)
    await link.to_agent.send(Shutdown())


async def test_output_waits_for_accept_after_and_follows_job_accepted(
    agents, nursery, h, tmp_path: Path
) -> None:
    """A script that prints at once and runs on: JobAccepted after accept_after, then its
    output, while it still runs."""
    gate = tmp_path / "gate"
    link = await serve_recorded(agents, nursery, accept_after=0.05)
    await link.to_agent.send(h.make_dispatch(gated(gate, tmp_path / "log", before="echo hi\n")))
    await link.wait_for(OutputChunk)
    assert not gate.exists()
    [hello], [accepted], [chunk] = link.writes
    assert isinstance(accepted, JobAccepted) and chunk.data == b"hi\n"
    gate.touch()
    await link.wait_for(JobFinished)
    await link.to_agent.send(Shutdown())


async def test_a_short_attempts_output_goes_between_accepted_and_finished(
    agents, nursery, h
) -> None:
    """A script that prints and ends within accept_after: accepted, its chunks, finished."""
    link = await serve_recorded(agents, nursery, accept_after=5.0)
    await link.to_agent.send(h.make_dispatch("echo out\necho err >&2\n"))
    await link.wait_for(JobFinished)
    sent = [m for w in link.writes[1:] for m in w]
    assert isinstance(sent[0], JobAccepted) and isinstance(sent[-1], JobFinished)
    chunks = sent[1:-1]
    assert sorted(c.data for c in chunks) == [b"err\n", b"out\n"]
    assert [c.seq for c in chunks] == [0, 1] and sent[-1].chunks == 2
    await link.to_agent.send(Shutdown())
