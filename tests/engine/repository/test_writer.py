"""The single writer: group commit, per-op rollback, ordering, cancellation, close."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import outcome
import pytest
import trio

from wfe.engine.repository import (
    Repository,
    RepositoryClosed,
    RepositoryError,
    Tx,
    open_repository,
)

GUARD = 10  # seconds; real threads are in flight, so these tests run on the real clock


def insert_job(job_id: str, state: str = "queued") -> Any:
    def op(tx: Tx) -> str:
        tx.execute(
            "INSERT INTO jobs (id, kind, name, root_id, state, created_at)"
            " VALUES (?, 'action', 'test.op', ?, ?, ?)",
            (job_id, job_id, state, tx.at),
        )
        tx.emit("job.created", job_id, {"state": state})
        return job_id

    return op


async def job_ids(repo: Repository) -> list[str]:
    return await repo.read(lambda c: [r[0] for r in c.execute("SELECT id FROM jobs ORDER BY id")])


async def event_subjects(repo: Repository) -> list[str]:
    return [e.subject for e in await repo.events_since(0, limit=100_000)]


async def test_concurrent_writers_share_few_transactions(repo: Repository) -> None:
    """200 concurrent writers all commit, in far fewer than 200 transactions."""
    results: dict[int, str] = {}

    async def writer(n: int) -> None:
        results[n] = await repo.write(insert_job(f"job-{n:03d}"))

    with trio.fail_after(GUARD):
        before = repo.statistics().commits
        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(writer, n)
        stats = repo.statistics()
    assert results == {n: f"job-{n:03d}" for n in range(200)}
    assert await job_ids(repo) == [f"job-{n:03d}" for n in range(200)]
    assert sorted(await event_subjects(repo)) == [f"job-{n:03d}" for n in range(200)]
    assert stats.commits - before <= 10
    assert stats.max_ops_per_commit >= 20
    assert stats.ops_per_commit_avg > 1
    assert stats.failed_ops == 0


async def test_failing_op_rolls_back_only_itself(repo: Repository, gate: Any) -> None:
    """An op that raises loses its own changes and events; the rest of its batch commits."""

    def failing(tx: Tx) -> None:
        insert_job("job-bad")(tx)
        tx.emit("job.extra", "job-bad")
        raise ValueError("refused: job-bad")

    outcomes: dict[str, object] = {}

    async def run(name: str, op: Any) -> None:
        try:
            outcomes[name] = await repo.write(op)
        except ValueError as exc:
            outcomes[name] = exc

    with trio.fail_after(GUARD):
        await gate.hold()
        commits = repo.statistics().commits
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "a", insert_job("job-a"))
            nursery.start_soon(run, "bad", failing)
            nursery.start_soon(run, "c", insert_job("job-c"))
            await gate.settle()
            assert repo.statistics().queue_depth == 3
            gate.release()
    stats = repo.statistics()
    assert stats.commits == commits + 2  # the gate's batch, then one batch of the three
    assert stats.ops_per_commit_last == 3
    assert outcomes["a"] == "job-a" and outcomes["c"] == "job-c"
    assert isinstance(outcomes["bad"], ValueError)
    assert str(outcomes["bad"]) == "refused: job-bad"
    assert await job_ids(repo) == ["job-a", "job-c"]
    assert sorted(await event_subjects(repo)) == ["job-a", "job-c"]


async def test_failing_op_alone_in_its_batch(repo: Repository) -> None:
    """A batch of one failing op commits nothing and raises the op's own error."""
    with trio.fail_after(GUARD):
        await repo.write(insert_job("job-1"))
        with pytest.raises(sqlite3.IntegrityError):
            await repo.write(insert_job("job-1"))  # duplicate primary key
        assert await repo.write(insert_job("job-2")) == "job-2"
    assert await job_ids(repo) == ["job-1", "job-2"]
    assert await event_subjects(repo) == ["job-1", "job-2"]
    assert repo.statistics().failed_ops == 1


async def test_op_that_commits_fails_its_whole_batch(repo: Repository) -> None:
    """An op may not end the group transaction; doing so fails the batch with a RepositoryError."""
    with trio.fail_after(GUARD):
        with pytest.raises(RepositoryError, match="ops must not COMMIT or ROLLBACK"):
            await repo.write(lambda tx: tx.execute("ROLLBACK"))
        assert await repo.write(insert_job("job-after")) == "job-after"  # the writer goes on


async def test_write_nowait_keeps_order_with_write_and_flush(repo: Repository) -> None:
    """write_nowait ops commit in submission order with write(); flush waits for all of them."""
    with trio.fail_after(GUARD):
        for n in range(50):
            repo.write_nowait(insert_job(f"job-{n:02d}"))
        assert await repo.write(insert_job("job-50")) == "job-50"
        for n in range(51, 100):
            repo.write_nowait(insert_job(f"job-{n:02d}"))
        await repo.flush()
        assert repo.statistics().queue_depth == 0
    assert await event_subjects(repo) == [f"job-{n:02d}" for n in range(100)]


async def test_write_nowait_failure_is_logged_not_raised(
    repo: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing write_nowait op is logged; the ops around it commit."""

    def broken(tx: Tx) -> None:
        raise KeyError("no such job")

    with trio.fail_after(GUARD), caplog.at_level(logging.ERROR, logger="wfe.engine.repository"):
        repo.write_nowait(insert_job("job-1"))
        repo.write_nowait(broken)
        repo.write_nowait(insert_job("job-2"))
        await repo.flush()
    assert await job_ids(repo) == ["job-1", "job-2"]
    assert "write_nowait op" in caplog.text and "no such job" in caplog.text


async def test_write_nowait_then_hears_the_outcome_after_commit(
    repo: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    """then() gets the op's value once committed, or its error (not logged); a then() that
    raises is logged and the writer goes on."""
    heard: list[tuple[str, Any, int]] = []

    def then(label: str) -> Any:
        def called(result: outcome.Outcome[Any]) -> None:
            heard.append((label, result, repo.statistics().commits))

        return called

    def broken(tx: Tx) -> None:
        raise KeyError("no such job")

    def raises(result: outcome.Outcome[Any]) -> None:
        raise RuntimeError("then blew up")

    with trio.fail_after(GUARD), caplog.at_level(logging.ERROR, logger="wfe.engine.repository"):
        await repo.flush()
        before = repo.statistics().commits
        repo.write_nowait(insert_job("job-1"), then=then("ok"))
        repo.write_nowait(broken, then=then("broken"))
        repo.write_nowait(insert_job("job-2"), then=raises)
        assert heard == []  # nothing is called before the writer ran
        await repo.flush()
    [(_, ok, commits), (_, failed, _)] = heard
    assert ok == outcome.Value("job-1")
    assert commits == before + 1  # called after the commit
    assert isinstance(failed, outcome.Error) and isinstance(failed.error, KeyError)
    assert await job_ids(repo) == ["job-1", "job-2"]
    assert "write_nowait op" not in caplog.text  # then() had the error
    assert "then blew up" in caplog.text


async def test_write_cancelled_while_queued_never_runs(repo: Repository, gate: Any) -> None:
    """A write cancelled before the writer took it raises Cancelled and changes nothing."""
    with trio.fail_after(GUARD):
        await gate.hold()
        with trio.move_on_after(0) as scope:
            await repo.write(insert_job("job-cancelled"))
        assert scope.cancelled_caught
        gate.release()
        await repo.write(insert_job("job-kept"))
    assert await job_ids(repo) == ["job-kept"]


async def test_write_cancelled_after_taken_still_reports_commit(
    repo: Repository, gate: Any
) -> None:
    """Once the writer has taken an op, cancelling its caller waits for the commit first."""
    done: list[str] = []

    async def caller(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            done.append(await repo.write(gate_then(insert_job("job-1"))))
            await trio.lowlevel.checkpoint()  # the pending cancellation lands here
            done.append("not reached")

    def gate_then(op: Any) -> Any:
        def gated(tx: Tx) -> Any:
            gate._block(tx)
            return op(tx)

        return gated

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            scope = await nursery.start(caller)
            await trio.to_thread.run_sync(gate._entered.wait, abandon_on_cancel=True)
            scope.cancel()
            gate.release()
    assert done == ["job-1"]
    assert await job_ids(repo) == ["job-1"]


async def test_tx_is_invalid_after_its_op(repo: Repository) -> None:
    """Keeping the Tx past its op and using it later raises RepositoryError."""
    kept: list[Tx] = []
    with trio.fail_after(GUARD):
        await repo.write(kept.append)
        with pytest.raises(RepositoryError, match="used after its op returned"):
            kept[0].execute("SELECT 1")


async def test_allocate_counts_atomically_and_rolls_back(repo: Repository) -> None:
    """Counters hand out 1, 2, 3... across concurrent writers; a failed op's value is reused."""
    got: list[int] = []

    async def allocate() -> None:
        got.append(await repo.write(lambda tx: tx.allocate("request.demo-alice")))

    def allocate_then_fail(tx: Tx) -> None:
        tx.allocate("request.demo-alice")
        raise RuntimeError("changed my mind")

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(allocate)
        with pytest.raises(RuntimeError):
            await repo.write(allocate_then_fail)
        assert await repo.write(lambda tx: tx.allocate("request.demo-alice")) == 21
        assert await repo.write(lambda tx: tx.allocate("other")) == 1
    assert sorted(got) == list(range(1, 21))


async def test_emit_refuses_data_that_is_not_json(repo: Repository) -> None:
    """Event data must be strict JSON: NaN or an object fails the op, changing nothing."""
    with trio.fail_after(GUARD):
        with pytest.raises(ValueError):
            await repo.write(lambda tx: tx.emit("x", "y", {"value": float("nan")}))
        with pytest.raises(TypeError, match="not JSON serialisable: object"):
            await repo.write(lambda tx: tx.emit("x", "y", {"value": object()}))
    assert await repo.events_since(0) == []


async def test_close_commits_queued_ops_then_refuses_writes(repo_path: Path) -> None:
    """Leaving the block commits what was queued; afterwards writes raise RepositoryClosed."""
    with trio.fail_after(GUARD):
        async with open_repository(repo_path) as repo:
            for n in range(10):
                repo.write_nowait(insert_job(f"job-{n}"))
        with pytest.raises(RepositoryClosed, match="repository is closed"):
            await repo.write(insert_job("late"))
        with pytest.raises(RepositoryClosed):
            repo.write_nowait(insert_job("late"))
        async with open_repository(repo_path) as repo:
            assert len(await job_ids(repo)) == 10


async def test_error_in_block_propagates_unwrapped(repo_path: Path) -> None:
    """An exception raised inside the block comes out as itself, after queued ops commit."""
    with trio.fail_after(GUARD):
        with pytest.raises(KeyError, match="boom"):
            async with open_repository(repo_path) as repo:
                repo.write_nowait(insert_job("job-1"))
                raise KeyError("boom")
        async with open_repository(repo_path) as repo:
            assert await job_ids(repo) == ["job-1"]


async def test_cancelled_block_still_closes_cleanly(repo_path: Path) -> None:
    """Cancelling the block's scope still commits what was queued and closes the file."""
    with trio.fail_after(GUARD):
        with trio.CancelScope() as scope:
            async with open_repository(repo_path) as repo:
                repo.write_nowait(insert_job("job-1"))
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        async with open_repository(repo_path) as repo:
            assert await job_ids(repo) == ["job-1"]


async def test_open_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    """Opening a non-SQLite file fails with one line naming the file."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not a database, just some text that is long enough" * 20)
    with pytest.raises(RepositoryError, match=r"notes\.txt: not a usable wfe repository"):
        async with open_repository(path):
            pass


async def test_bad_options_are_refused(repo_path: Path) -> None:
    """synchronous, max_batch and inline_max are validated."""
    with pytest.raises(ValueError, match="synchronous must be one of"):
        async with open_repository(repo_path, synchronous="SOMETIMES"):
            pass
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        async with open_repository(repo_path, max_batch=0):
            pass
    with pytest.raises(ValueError, match="inline_max must be at least 0"):
        async with open_repository(repo_path, inline_max=-1):
            pass


async def test_small_batches_run_on_the_trio_thread_and_large_ones_on_a_worker(
    repo_path: Path,
) -> None:
    """A batch of at most inline_max ops runs on the trio thread; a larger one on a worker."""
    threads: list[int] = []

    def where(tx: Tx) -> None:
        threads.append(threading.get_ident())

    with trio.fail_after(GUARD):
        async with open_repository(repo_path, inline_max=3) as repo:
            await repo.write(where)
            assert threads == [threading.get_ident()]
            threads.clear()
            for _ in range(10):  # queued before the writer runs again: one batch of 11
                repo.write_nowait(where)
            await repo.write(where)
            assert repo.statistics().ops_per_commit_last == 11
    assert len(threads) == 11
    assert threading.get_ident() not in threads


async def test_commits_that_fsync_never_run_on_the_trio_thread(repo_path: Path) -> None:
    """Under synchronous=FULL every batch, however small, runs on the worker thread."""
    threads: list[int] = []
    with trio.fail_after(GUARD):
        async with open_repository(repo_path, synchronous="FULL", inline_max=100) as repo:
            await repo.write(lambda tx: threads.append(threading.get_ident()))
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()


async def test_max_batch_bounds_ops_per_transaction(repo_path: Path) -> None:
    """No transaction holds more than max_batch ops."""
    with trio.fail_after(GUARD):
        async with open_repository(repo_path, max_batch=7) as repo:
            for n in range(50):
                repo.write_nowait(insert_job(f"job-{n:02d}"))
            await repo.flush()
            stats = repo.statistics()
    assert stats.max_ops_per_commit == 7
    assert stats.commits >= 8


async def test_pragmas(repo_path: Path) -> None:
    """The file is in WAL mode; foreign keys are enforced; synchronous is configurable."""
    with trio.fail_after(GUARD):
        async with open_repository(repo_path, synchronous="FULL") as repo:
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
                await repo.write(
                    lambda tx: tx.execute(
                        "INSERT INTO attempts (job_id, attempt, state) VALUES ('nope', 1, 'x')"
                    )
                )
            journal = await repo.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
            synchronous = await repo.write(
                lambda tx: tx.execute("PRAGMA synchronous").fetchone()[0]
            )
    assert journal == "wal"
    assert synchronous == 2  # FULL


class Boom(BaseException):
    """Stands in for KeyboardInterrupt inside an op."""


async def test_writer_stopped_by_a_base_exception_fails_every_waiting_caller(
    repo_path: Path, make_gate: Any
) -> None:
    """A BaseException in an op stops the writer: nothing of its batch commits, every caller hears it."""
    outcomes: list[BaseException] = []

    async def run(op: Any) -> None:
        try:
            await repo.write(op)
        except RepositoryClosed as exc:
            outcomes.append(exc)

    def boom(tx: Tx) -> None:
        raise Boom

    told: list[outcome.Outcome[Any]] = []
    with trio.fail_after(GUARD), pytest.raises(Boom):
        async with open_repository(repo_path, inline_max=0) as repo:
            gate = make_gate(repo)
            await gate.hold()
            async with trio.open_nursery() as nursery:
                for op in (insert_job("job-1"), boom, insert_job("job-2")):  # queued in this order
                    nursery.start_soon(run, op)
                    await gate.settle()
                repo.write_nowait(insert_job("job-3"), then=told.append)
                gate.release()
    assert len(outcomes) == 3
    [closed] = told
    assert isinstance(closed, outcome.Error) and isinstance(closed.error, RepositoryClosed)
    assert all("writer stopped before committing: Boom()" in str(e) for e in outcomes)
    async with open_repository(repo_path) as repo:
        assert await job_ids(repo) == []


async def test_a_heavy_op_commits_on_the_worker_thread_a_light_one_on_the_loop(
    repo_path: Path,
) -> None:
    """A small batch commits on the trio thread, but an op that weighs more than inline_max
    (a big output chunk) goes to the writer's worker thread, so it never holds the loop."""
    threads: list[int] = []

    def op(tx: Tx) -> None:
        threads.append(threading.get_ident())

    async with open_repository(repo_path, inline_max=16) as repo:
        repo.write_nowait(op)
        await repo.flush()
        repo.write_nowait(op, weight=17)
        await repo.flush()
        repo.write_nowait(op, weight=8)
        await repo.flush()
    loop = threading.get_ident()
    assert threads[0] == loop and threads[1] != loop and threads[2] == loop
