"""The runner: one attempt as a real child process, its output, limits and result."""

from __future__ import annotations

import json
import signal
import types
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.agents.keeper_link import KeeperLink
from wfe.agents.results import MAX_RESULT_BYTES
from wfe.agents.runner import Attempt
from wfe.protocols.messages import (
    MAX_CHUNK_BYTES,
    Dispatch,
    FinishReason,
    JobFinished,
    OutputChunk,
    Stream,
)

GUARD = 10.0


class Recorder:
    """Collects the chunks of an attempt; ``first`` is set when one arrived."""

    def __init__(self) -> None:
        self.chunks: list[OutputChunk] = []
        self.first = trio.Event()

    async def __call__(self, chunk: OutputChunk) -> None:
        self.chunks.append(chunk)
        self.first.set()

    def text(self, stream: Stream) -> str:
        return b"".join(c.data for c in self.chunks if c.stream is stream).decode()


async def run(dispatch: Dispatch, workdir: Path, **kwargs: Any) -> tuple[JobFinished, Recorder]:
    recorder = Recorder()
    with trio.fail_after(GUARD):
        finished = await Attempt(dispatch, workdir=workdir, kill_grace=0.5, **kwargs).run(recorder)
    return finished, recorder


async def test_sh_script_gets_params_on_stdin_and_in_a_file(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """Params reach the script as JSON on stdin and in $WFE_PARAMS, never pasted into code."""
    params = {"text": "'; echo INJECTED; '$(echo INJECTED)", "n": 3}
    script = (
        'echo "stdin=$(cat)"\n'
        'echo "file=$(cat "$WFE_PARAMS")"\n'
        'echo "job=$WFE_JOB_ID attempt=$WFE_ATTEMPT" >&2\n'
        "exit 3\n"
    )
    finished, out = await run(
        h.make_dispatch(script, params=params, attempt=2), tmp_path, keeper=keeper
    )
    assert finished.reason is FinishReason.EXITED
    assert finished.exit_code == 3 and finished.signal is None
    lines = out.text(Stream.STDOUT).splitlines()
    assert [json.loads(line.split("=", 1)[1]) for line in lines] == [params, params]
    assert "INJECTED\n" not in out.text(Stream.STDOUT)
    assert out.text(Stream.STDERR) == "job=job-1 attempt=2\n"
    assert finished.chunks == len(out.chunks)
    assert [c.seq for c in out.chunks] == list(range(len(out.chunks)))


async def test_python_script_writes_a_result(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """A python3 script (named by its header) reads stdin and its result JSON comes back."""
    script = (
        "#!/usr/bin/env python3\n"
        "# name: double\n"
        "# interpreter: python3\n"
        "import json, os, sys\n"
        "params = json.load(sys.stdin)\n"
        "json.dump({'double': params['x'] * 2, 'cwd': os.getcwd()}, open(os.environ['WFE_RESULT'], 'w'))\n"
    )
    finished, _ = await run(h.make_dispatch(script, params={"x": 21}), tmp_path, keeper=keeper)
    assert finished.exit_code == 0 and finished.detail == ""
    assert finished.result is not None
    assert finished.result["double"] == 42
    assert finished.result["cwd"] == str(tmp_path / "job-1-1")
    assert finished.duration > 0


async def test_megabytes_of_output_arrive_whole_in_order_in_bounded_chunks(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """Several MB on both streams arrive complete, in order, no chunk above MAX_CHUNK_BYTES."""
    script = (
        "# interpreter: python3\n"
        "import sys\n"
        "for i in range(60000):\n"
        "    sys.stdout.write(f'out {i:08d} ' + 'x' * 70 + '\\n')\n"
        "    if i % 5 == 0:\n"
        "        sys.stderr.write(f'err {i:08d}\\n')\n"
    )
    finished, out = await run(h.make_dispatch(script), tmp_path, keeper=keeper)
    assert finished.exit_code == 0
    stdout = out.text(Stream.STDOUT)
    assert len(stdout) > 4_000_000
    assert stdout == "".join(f"out {i:08d} " + "x" * 70 + "\n" for i in range(60000))
    assert out.text(Stream.STDERR) == "".join(f"err {i:08d}\n" for i in range(0, 60000, 5))
    assert max(len(c.data) for c in out.chunks) <= MAX_CHUNK_BYTES
    assert [c.seq for c in out.chunks] == list(range(finished.chunks))


async def test_timeout_kills_the_whole_process_group(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """At the timeout the script and its background grandchild are killed (SIGTERM)."""
    script = "sleep 60 &\necho $!\nsleep 60\n"
    finished, out = await run(h.make_dispatch(script, timeout=0.3), tmp_path, keeper=keeper)
    assert finished.reason is FinishReason.TIMED_OUT
    assert finished.signal == signal.SIGTERM and finished.exit_code is None
    assert "timeout of 0.3 s" in finished.detail
    assert 0.3 <= finished.duration < 0.3 + 0.5
    assert h.is_dead(int(out.text(Stream.STDOUT)))


async def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """A group that ignores SIGTERM is SIGKILLed after the grace period."""
    script = "trap '' TERM\nsleep 60 &\necho $!\nwait\n"
    finished, out = await run(h.make_dispatch(script, timeout=0.2), tmp_path, keeper=keeper)
    assert finished.reason is FinishReason.TIMED_OUT
    assert finished.signal == signal.SIGKILL
    assert finished.duration >= 0.2 + 0.5
    assert h.is_dead(int(out.text(Stream.STDOUT)))


async def test_cancel_kills_the_whole_process_group(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """cancel() ends the attempt as CANCELLED and kills the grandchild too."""
    attempt = Attempt(
        h.make_dispatch("sleep 60 &\necho $!\nsleep 60\n"),
        keeper=keeper,
        workdir=tmp_path,
        kill_grace=0.5,
    )
    recorder = Recorder()
    results: list[JobFinished] = []

    async def go(task_status: trio.TaskStatus[int | None]) -> None:
        results.append(await attempt.run(recorder, task_status=task_status))

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            pid = await nursery.start(go)
            assert pid == attempt.pid and pid is not None
            await recorder.first.wait()
            attempt.cancel("operator asked")
    [finished] = results
    assert finished.reason is FinishReason.CANCELLED
    assert finished.detail == "cancelled: operator asked"
    assert finished.signal == signal.SIGTERM
    assert h.is_dead(pid)
    assert h.is_dead(int(recorder.text(Stream.STDOUT)))


async def test_outside_cancellation_kills_the_group_before_propagating(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """If the caller is cancelled, the script is dead by the time Cancelled arrives, and the
    rest of its process group has been sent SIGKILL: a background child is gone a moment
    later (a killed process needs the CPU once to exit; on a loaded machine that can follow
    the cancellation by a few milliseconds)."""
    attempt = Attempt(
        h.make_dispatch("sleep 60 &\necho $!\nsleep 60\n"), keeper=keeper, workdir=tmp_path
    )
    recorder = Recorder()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt.run, recorder)
            await recorder.first.wait()
            nursery.cancel_scope.cancel()
    assert attempt.pid is not None and h.is_dead(attempt.pid)
    background = int(recorder.text(Stream.STDOUT))
    with trio.fail_after(2):
        while not h.is_dead(background):  # noqa: ASYNC110 - /proc has no event to wait on
            await trio.sleep(0.005)
    assert not (tmp_path / "job-1-1").exists()


async def test_cancel_before_start_runs_nothing(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """An attempt cancelled before it started reports CANCELLED and never starts a process."""
    marker = tmp_path / "ran"
    attempt = Attempt(
        h.make_dispatch(f"touch {marker}\n"), keeper=keeper, workdir=tmp_path / "work"
    )
    attempt.cancel("too late")
    with trio.fail_after(GUARD):
        finished = await attempt.run(Recorder())
    assert finished.reason is FinishReason.CANCELLED and attempt.pid is None
    assert not marker.exists()


async def test_leftover_background_processes_die_when_the_script_exits(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """A script that exits leaving a child behind: the child is killed, the attempt ends."""
    finished, out = await run(
        h.make_dispatch("sleep 60 &\necho $!\nexit 0\n"), tmp_path, keeper=keeper
    )
    assert finished.reason is FinishReason.EXITED and finished.exit_code == 0
    assert h.is_dead(int(out.text(Stream.STDOUT)))


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("{not json", "result.json is not valid JSON"),
        ("[1, 2]", "result.json must hold a JSON object, not an array"),
        ('"text"', "result.json must hold a JSON object, not a string"),
        ('{"x": NaN}', "result.json is not valid JSON: NaN is not JSON"),
    ],
)
async def test_a_bad_result_is_reported_and_the_exit_code_kept(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path, content: str, detail: str
) -> None:
    """A result that is not a JSON object is dropped with a detail saying why."""
    (tmp_path / "content").write_text(content)
    script = f'cat {tmp_path / "content"} > "$WFE_RESULT"\nexit 4\n'
    finished, _ = await run(h.make_dispatch(script), tmp_path / "work", keeper=keeper)
    assert finished.reason is FinishReason.EXITED and finished.exit_code == 4
    assert finished.result is None
    assert finished.detail.startswith(detail)


async def test_an_oversize_result_is_refused(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """A result file above MAX_RESULT_BYTES is not sent."""
    script = (
        "# interpreter: python3\nimport json, os\n"
        f"json.dump({{'x': 'y' * {MAX_RESULT_BYTES}}}, open(os.environ['WFE_RESULT'], 'w'))\n"
    )
    finished, _ = await run(h.make_dispatch(script), tmp_path, keeper=keeper)
    assert finished.exit_code == 0 and finished.result is None
    assert f"exceeds the limit of {MAX_RESULT_BYTES}" in finished.detail


async def test_no_result_file_means_no_result(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """Without $WFE_RESULT written the result is None and there is no detail."""
    finished, _ = await run(h.make_dispatch("true\n"), tmp_path, keeper=keeper)
    assert finished.result is None and finished.detail == "" and finished.chunks == 0


@pytest.mark.parametrize(("size", "exit_code"), [(1 << 30, 1), (16 << 20, 0)])
async def test_memory_limit_makes_a_large_allocation_fail(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path, size: int, exit_code: int
) -> None:
    """With limits.memory set, an allocation beyond it fails in the script, and the detail
    says it ran out of memory (the engine's on_retry reads it); one within succeeds."""
    script = (
        "# interpreter: python3\nimport json, sys\n"
        "data = bytearray(json.load(sys.stdin)['size'])\nprint('allocated')\n"
    )
    finished, out = await run(
        h.make_dispatch(script, params={"size": size}, memory=256 << 20), tmp_path, keeper=keeper
    )
    assert finished.exit_code == exit_code
    if exit_code:
        assert "MemoryError" in out.text(Stream.STDERR)
        limit = 256 << 20
        assert (
            finished.detail
            == f"out of memory: an allocation failed under its limit of {limit} bytes"
        )
    else:
        assert out.text(Stream.STDOUT) == "allocated\n"
        assert not finished.detail.startswith("out of memory")


async def test_unknown_interpreter_is_an_error_without_a_process(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """An interpreter not on PATH ends the attempt with ERROR; started() gets None."""
    attempt = Attempt(
        h.make_dispatch("# interpreter: no-such-shell\n"), keeper=keeper, workdir=tmp_path
    )
    async with trio.open_nursery() as nursery:
        assert await nursery.start(attempt.run, Recorder()) is None
    finished, _ = await run(
        h.make_dispatch("# interpreter: no-such-shell\n"), tmp_path, keeper=keeper
    )
    assert finished.reason is FinishReason.ERROR
    assert finished.detail == "interpreter 'no-such-shell' not found on PATH"


async def test_the_workdir_is_removed_unless_kept(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """The per-attempt directory goes away after the attempt, unless keep_workdir."""
    await run(h.make_dispatch("echo hi > file\n", job_id="a"), tmp_path, keeper=keeper)
    assert not (tmp_path / "a-1").exists()
    await run(
        h.make_dispatch("echo hi > file\n", job_id="b"), tmp_path, keep_workdir=True, keeper=keeper
    )
    assert (tmp_path / "b-1" / "file").read_text() == "hi\n"
    assert (tmp_path / "b-1" / "script").read_text() == "echo hi > file\n"


async def test_a_stale_workdir_is_replaced(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """A directory left by a crashed agent for the same attempt does not leak into the run."""
    (tmp_path / "job-1-1").mkdir()
    (tmp_path / "job-1-1" / "result.json").write_text('{"stale": true}')
    finished, _ = await run(h.make_dispatch("true\n"), tmp_path, keeper=keeper)
    assert finished.result is None


async def test_job_ids_cannot_escape_the_workdir(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """A job id with slashes names a directory inside the workdir, not a path elsewhere."""
    finished, out = await run(
        h.make_dispatch("pwd\n", job_id="../../escape"), tmp_path / "w", keeper=keeper
    )
    assert finished.exit_code == 0
    assert Path(out.text(Stream.STDOUT).strip()).parent == tmp_path / "w"


async def test_a_fifo_as_result_does_not_hang_the_agent(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """A script that leaves a FIFO named result.json gets a detail, not a hung agent."""
    finished, _ = await run(h.make_dispatch('mkfifo "$WFE_RESULT"\n'), tmp_path, keeper=keeper)
    assert finished.exit_code == 0 and finished.result is None
    assert finished.detail == "result.json is not a regular file"


async def test_a_short_scripts_output_is_read_after_it_ends(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """With on_running, a script that ends within running_after has all its output read
    after its end, announced first; a pipe an escaped process keeps open is waited for a
    little (kill_grace), not forever."""
    events: list[object] = []

    async def on_running(pid: int) -> None:
        events.append(("running", pid))

    async def on_chunk(chunk: OutputChunk) -> None:
        events.append(chunk)

    script = "echo out\necho err >&2\nsetsid sleep 3 &\n"
    attempt = Attempt(h.make_dispatch(script), keeper=keeper, workdir=tmp_path, kill_grace=0.3)
    with trio.fail_after(GUARD):
        start = trio.current_time()
        finished = await attempt.run(on_chunk, on_running=on_running, running_after=5.0)
        took = trio.current_time() - start
    assert finished.exit_code == 0 and attempt.announced
    assert events[0] == ("running", attempt.pid)
    chunks = events[1:]
    assert sorted(c.data for c in chunks) == [b"err\n", b"out\n"]  # type: ignore[union-attr]
    assert [c.seq for c in chunks] == [0, 1] and finished.chunks == 2  # type: ignore[union-attr]
    assert took < 3  # did not wait for the escaped sleep


async def test_a_silent_short_script_is_never_announced(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """A script that prints nothing and ends within running_after: on_running is not called."""
    calls: list[int] = []

    async def on_running(pid: int) -> None:
        calls.append(pid)

    attempt = Attempt(h.make_dispatch("true\n"), keeper=keeper, workdir=tmp_path)
    with trio.fail_after(GUARD):
        finished = await attempt.run(Recorder(), on_running=on_running, running_after=5.0)
    assert finished.exit_code == 0 and calls == [] and not attempt.announced
