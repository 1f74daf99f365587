"""The spool: results and output that survive the agent, written atomically, one owner."""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given

import wfe.agents.spool as spool_module
from wfe.agents.errors import SpoolError, SpoolLocked
from wfe.agents.spool import Spool, encode_record, read_records
from wfe.protocols import codec
from wfe.protocols.messages import AttemptRef, FinishReason, JobFinished, OutputChunk, Stream


def finished(job_id: str = "job-1", attempt: int = 1, **fields: object) -> JobFinished:
    return JobFinished(
        job_id=job_id,
        attempt=attempt,
        reason=FinishReason.EXITED,
        exit_code=0,
        result={"answer": 42},
        **fields,
    )


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def chunk(seq: int, data: bytes, stream: Stream = Stream.STDOUT) -> OutputChunk:
    return OutputChunk(job_id="job-1", attempt=1, stream=stream, seq=seq, data=data)


async def test_a_stored_result_survives_reopening(tmp_path: Path) -> None:
    """What store() wrote is there for a new Spool on the same directory."""
    await Spool(tmp_path).store(finished(duration=1.5, chunks=3))
    again = Spool(tmp_path)
    assert again.get("job-1", 1) == finished(duration=1.5, chunks=3)
    assert again.held() == [AttemptRef(job_id="job-1", attempt=1)]
    assert again.get("job-1", 2) is None


async def test_held_is_sorted_and_job_ids_stay_inside_the_spool(tmp_path: Path) -> None:
    """Any job id maps to a file in the spool directory and back to itself."""
    spool = Spool(tmp_path / "spool")
    ids = ["b", "a-2", "../../x", "with space/and%percent", "a"]
    for job_id in ids:
        await spool.store(finished(job_id, 7))
    assert [r.job_id for r in spool.held()] == sorted(ids)
    assert [r.job_id for r in Spool(tmp_path / "spool").held()] == sorted(ids)
    assert listing(tmp_path) == ["spool"]
    assert listing(tmp_path / "spool") == ["journal"]
    assert spool.get("../../x", 7) == finished("../../x", 7)


async def test_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    """After store() only the journal is there."""
    spool = Spool(tmp_path)
    await spool.store(finished())
    assert listing(tmp_path) == ["journal"]


async def test_a_torn_journal_tail_leaves_earlier_results_whole(tmp_path: Path) -> None:
    """A record cut short by a crash is ignored; what came before it is held, and later
    records go after the whole ones."""
    await Spool(tmp_path).store(finished(detail="first"))
    whole = (tmp_path / "journal").read_bytes()
    await Spool(tmp_path).store(finished("job-2", detail="second"))
    torn = (tmp_path / "journal").read_bytes()[: len(whole) + 7]
    (tmp_path / "journal").write_bytes(torn)
    spool = Spool(tmp_path)
    assert spool.held() == [AttemptRef(job_id="job-1", attempt=1)]
    await spool.store(finished("job-3"))
    again = Spool(tmp_path)
    assert again.held() == [
        AttemptRef(job_id="job-1", attempt=1),
        AttemptRef(job_id="job-3", attempt=1),
    ]
    assert again.get("job-1", 1) == finished(detail="first")


async def test_a_damaged_record_ends_the_replay(tmp_path: Path) -> None:
    """A record whose checksum fails is not trusted, nor anything after it; recover says so."""
    spool = Spool(tmp_path)
    await spool.store(finished())
    data = bytearray((tmp_path / "journal").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "journal").write_bytes(bytes(data))
    spool = Spool(tmp_path)
    assert spool.held() == []
    assert await spool.recover() == ([], {})
    assert (tmp_path / "journal").read_bytes() == b""


async def test_a_failed_fsync_fails_the_store_and_holds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the journal cannot be made durable, store() raises and the result is not held."""
    spool = Spool(tmp_path)
    await spool.store(finished(detail="first"))

    def fail(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(OSError, match="disk on fire"):
        await spool.store(finished("job-2"))
    monkeypatch.undo()
    assert spool.held() == [AttemptRef(job_id="job-1", attempt=1)]
    assert spool.get("job-1", 1) == finished(detail="first")


async def test_stores_at_the_same_time_share_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten results stored at once cost two fdatasyncs, not ten; each is durable on return."""
    spool = Spool(tmp_path)
    calls: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(spool.store, finished(f"job-{n}"))
    assert len(calls) == 2
    assert len(Spool(tmp_path).held()) == 10


async def test_waiters_of_a_failed_fsync_fail_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every store whose record a failed fdatasync was to cover raises; none is held."""
    spool = Spool(tmp_path)

    def fail(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fdatasync", fail)
    errors: list[str] = []

    async def store(n: int) -> None:
        try:
            await spool.store(finished(f"job-{n}"))
        except OSError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(store, n)
    assert len(errors) == 3 and all("disk on fire" in e for e in errors)
    assert spool.held() == []


async def test_the_journal_is_compacted_and_keeps_what_is_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past COMPACT_BYTES the journal is rewritten: held results and running attempts stay,
    dropped ones go, and the file stays small."""
    monkeypatch.setattr(spool_module, "COMPACT_BYTES", 2000)
    spool = Spool(tmp_path)
    await spool.begin_output("running", 1)
    await spool.store(finished("kept"))
    for n in range(100):
        await spool.begin_output(f"job-{n}", 1)
        await spool.store(finished(f"job-{n}"))
        assert await spool.drop(f"job-{n}", 1)
    assert (tmp_path / "journal").stat().st_size < 2000 + 500
    again = Spool(tmp_path)
    assert again.held() == [AttemptRef(job_id="kept", attempt=1)]
    [lost], _ = await again.recover()
    assert lost.job_id == "running" and lost.reason is FinishReason.FENCED


async def test_results_of_an_earlier_version_are_held_and_dropped(tmp_path: Path) -> None:
    """A <job>-<attempt>.json left by an agent that kept one file per result is held, and
    dropping it removes the file; it is not reported lost."""
    (tmp_path / "old-2.json").write_bytes(codec.encode(finished("old", 2)))
    spool = Spool(tmp_path)
    assert await spool.recover() == ([], {})
    assert spool.held() == [AttemptRef(job_id="old", attempt=2)]
    assert spool.get("old", 2) == finished("old", 2)
    assert await spool.drop("old", 2)
    assert spool.held() == [] and not (tmp_path / "old-2.json").exists()
    assert Spool(tmp_path).held() == []


async def test_an_unreadable_result_is_a_spool_error(tmp_path: Path) -> None:
    """A damaged result file is reported, not taken for a missing one."""
    (tmp_path / "job-1-1.json").write_text("{garbage")
    with pytest.raises(SpoolError, match="job-1-1.json"):
        Spool(tmp_path).get("job-1", 1)


async def test_drop_removes_result_and_output(tmp_path: Path) -> None:
    """drop() forgets an acknowledged attempt entirely; dropping twice is harmless."""
    spool = Spool(tmp_path)
    await spool.begin_output("job-1", 1)
    await spool.append_output(chunk(0, b"hello"))
    await spool.store(finished())
    assert await spool.drop("job-1", 1)
    assert listing(tmp_path) == ["journal"]
    assert not await spool.drop("job-1", 1)
    assert spool.open_output("job-1", 1) is None
    assert Spool(tmp_path).held() == []


async def test_output_is_replayed_in_order(tmp_path: Path) -> None:
    """Appended chunks read back in order, across both streams, after reopening."""
    spool = Spool(tmp_path)
    await spool.begin_output("job-1", 1)
    chunks = [chunk(0, b"a"), chunk(1, b"", Stream.STDERR), chunk(2, b"c" * 70000)]
    for c in chunks:
        await spool.append_output(c)
    reader = Spool(tmp_path).open_output("job-1", 1)
    assert reader is not None
    with reader:
        assert [reader.next_chunk() for _ in range(4)] == [*chunks, None]


async def test_begin_output_starts_afresh(tmp_path: Path) -> None:
    """A rerun of the same attempt does not inherit the old output."""
    spool = Spool(tmp_path)
    await spool.begin_output("job-1", 1)
    await spool.append_output(chunk(0, b"old"))
    await spool.begin_output("job-1", 1)
    assert spool.open_output("job-1", 1) is None
    await spool.append_output(chunk(0, b"new"))
    reader = spool.open_output("job-1", 1)
    assert reader is not None
    with reader:
        assert [reader.next_chunk(), reader.next_chunk()] == [chunk(0, b"new"), None]


@given(
    st.lists(st.tuples(st.sampled_from(Stream), st.binary(max_size=40)), max_size=8),
    st.integers(min_value=0),
)
def test_a_truncated_output_file_reads_as_a_prefix(
    pieces: list[tuple[Stream, bytes]], cut: int
) -> None:
    """Records round-trip; a file cut anywhere (a crash mid-append) yields a prefix of them."""
    chunks = [chunk(seq, data, stream) for seq, (stream, data) in enumerate(pieces)]
    data = b"".join(encode_record(c) for c in chunks)
    ref = AttemptRef(job_id="job-1", attempt=1)
    assert list(read_records(io.BytesIO(data), ref)) == chunks
    cut = cut % (len(data) + 1)
    prefix = list(read_records(io.BytesIO(data[:cut]), ref))
    assert prefix == chunks[: len(prefix)]


async def test_recover_reports_attempts_lost_with_the_agent(tmp_path: Path) -> None:
    """An attempt that was running when the agent died, and that no keeper holds, gets a
    FENCED result with its chunk count (it does not run on: the engine may run it again)."""
    spool = Spool(tmp_path)
    await spool.begin_output("lost", 3)
    for seq in range(2):
        await spool.append_output(
            OutputChunk(job_id="lost", attempt=3, stream=Stream.STDOUT, seq=seq, data=b"x")
        )
    await spool.begin_output("job-1", 1)
    await spool.store(finished())
    (tmp_path / "junk.json.tmp").write_text("{")

    await spool.begin_output("quiet", 1)  # began, no output yet

    restarted = Spool(tmp_path)
    (lost, quiet), adopted = await restarted.recover()
    assert adopted == {}
    assert lost.job_id == "lost" and lost.attempt == 3
    assert lost.reason is FinishReason.FENCED and lost.chunks == 2
    assert "stopped while the attempt ran" in lost.detail
    assert quiet.job_id == "quiet" and quiet.chunks == 0
    assert restarted.get("lost", 3) == lost
    assert restarted.get("job-1", 1) == finished()
    assert not (tmp_path / "junk.json.tmp").exists()
    assert await Spool(tmp_path).recover() == ([], {})
    assert Spool(tmp_path).get("quiet", 1) == quiet


async def test_recover_keeps_an_adoptable_attempt_and_cuts_its_torn_tail(tmp_path: Path) -> None:
    """An attempt the keeper still holds stays begun: its stored output is counted per
    stream, a record cut short by the crash is cut off, and no result is made for it."""
    spool = Spool(tmp_path)
    await spool.begin_output("run", 1)
    await spool.append_output(
        OutputChunk(job_id="run", attempt=1, stream=Stream.STDOUT, seq=0, data=b"abc")
    )
    await spool.append_output(
        OutputChunk(job_id="run", attempt=1, stream=Stream.STDERR, seq=1, data=b"de")
    )
    out = tmp_path / "run-1.out"
    whole = out.stat().st_size
    with out.open("ab") as f:
        f.write(b"\x00\x00\x00")  # a torn header
    ref = AttemptRef(job_id="run", attempt=1)
    closed, adopted = await Spool(tmp_path).recover([ref])
    assert closed == []
    assert adopted[ref].chunks == 2
    assert adopted[ref].sizes == {Stream.STDOUT: 3, Stream.STDERR: 2}
    assert out.stat().st_size == whole


def test_the_lock_refuses_a_second_owner(tmp_path: Path) -> None:
    """While one holder has agent.lock another cannot take it; afterwards it can."""
    with Spool(tmp_path).locked():
        with pytest.raises(SpoolLocked) as caught, Spool(tmp_path).locked():
            pass
        assert caught.value.path == str(tmp_path / "agent.lock")
    with Spool(tmp_path).locked():
        pass


async def test_a_second_agent_process_on_the_same_spool_exits_3(tmp_path: Path) -> None:
    """`wfe agent` on a spool another agent holds exits 3 with one line naming it."""
    spool = tmp_path / "spool"
    with Spool(spool).locked():
        with trio.fail_after(30):
            done = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "wfe.agents",
                    "--name",
                    "twin",
                    "--socket",
                    str(tmp_path / "s"),
                ]
                + ["--spool", str(spool), "--workdir", str(tmp_path / "w")],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert done.returncode == 3
    lock = spool / "agent.lock"
    assert done.stderr.decode() == f"agent twin is already running (spool locked: {lock})\n"
    assert done.stdout == b""


async def test_a_store_alone_syncs_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """store(alone=True) fsyncs in the calling thread; otherwise a worker thread does."""
    spool = Spool(tmp_path)
    threads: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        threads.append(threading.get_ident())
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    await spool.store(finished("a"), alone=True)
    await spool.store(finished("b"))
    assert threads[0] == threading.get_ident() != threads[1]
    assert [r.job_id for r in Spool(tmp_path).held()] == ["a", "b"]


async def test_after_a_slow_fsync_a_lone_store_syncs_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """A lone store fsyncs on the event loop while fsyncs are quick; after one slower than
    INLINE_SYNC_SECONDS the next goes to a worker thread, and after a quick one, inline
    again: a stalling disk does not stall the agent."""
    spool = Spool(tmp_path)
    threads: list[int] = []
    took = [0.0, 1.0, 0.0, 0.0]
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        threads.append(threading.get_ident())
        mock_clock.jump(took[len(threads) - 1])
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    for job in "abcd":
        await spool.store(finished(job), alone=True)
    here = threading.get_ident()
    assert [t == here for t in threads] == [True, True, False, True]
