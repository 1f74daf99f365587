"""The spool: results and output that survive the agent, written atomically, one owner."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import given

from agents.errors import SpoolError, SpoolLocked
from agents.spool import Spool, encode_record, read_records
from protocols.messages import AttemptRef, FinishReason, JobFinished, OutputChunk, Stream


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
    assert listing(tmp_path) == ["spool"]
    assert len(listing(tmp_path / "spool")) == len(ids)
    assert spool.get("../../x", 7) == finished("../../x", 7)


async def test_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    """After store() only the result file is there."""
    spool = Spool(tmp_path)
    await spool.store(finished())
    assert listing(tmp_path) == ["job-1-1.json"]


async def test_a_failed_store_leaves_the_previous_result_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash before the rename (simulated) never leaves a half-written result."""
    spool = Spool(tmp_path)
    await spool.store(finished(detail="first"))

    def crash(*args: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk on fire"):
        await spool.store(finished(detail="second"))
    monkeypatch.undo()
    assert spool.get("job-1", 1) == finished(detail="first")
    assert spool.held() == [AttemptRef(job_id="job-1", attempt=1)]
    await spool.recover()
    assert listing(tmp_path) == ["job-1-1.json"]


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
    assert listing(tmp_path) == []
    assert not await spool.drop("job-1", 1)
    assert spool.open_output("job-1", 1) is None


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
    reader = spool.open_output("job-1", 1)
    assert reader is not None
    with reader:
        assert reader.next_chunk() is None


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
    """An attempt that was running when the agent died gets an ERROR result with its chunk count."""
    spool = Spool(tmp_path)
    await spool.begin_output("lost", 3)
    for seq in range(2):
        await spool.append_output(
            OutputChunk(job_id="lost", attempt=3, stream=Stream.STDOUT, seq=seq, data=b"x")
        )
    await spool.begin_output("job-1", 1)
    await spool.store(finished())
    (tmp_path / "junk.json.tmp").write_text("{")

    [lost] = await Spool(tmp_path).recover()
    assert lost.job_id == "lost" and lost.attempt == 3
    assert lost.reason is FinishReason.ERROR and lost.chunks == 2
    assert "stopped while the attempt ran" in lost.detail
    assert spool.get("lost", 3) == lost
    assert spool.get("job-1", 1) == finished()
    assert not (tmp_path / "junk.json.tmp").exists()
    assert await Spool(tmp_path).recover() == []


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
                [sys.executable, "-m", "agents", "--name", "twin", "--socket", str(tmp_path / "s")]
                + ["--spool", str(spool), "--workdir", str(tmp_path / "w")],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert done.returncode == 3
    lock = spool / "agent.lock"
    assert done.stderr.decode() == f"agent twin is already running (spool locked: {lock})\n"
    assert done.stdout == b""
