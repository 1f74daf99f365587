"""How many committed state changes per second the repository sustains, and where the time goes.

Run from the repository root: ``python -m bench.repository [--quick] [--total N]``. A state
change is an UPDATE of one ``jobs`` row (its ``state`` is indexed) plus one ``events`` row,
committed. For each case it prints wall-clock changes per second, process CPU per change (both
threads; stable when the machine is shared), ops per transaction and the share of wall time the
writer thread was busy. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from wfe.engine.repository import Event, Repository, Tx, open_repository
from wfe.engine.repository.repository import connect_writer
from wfe.engine.repository.writer import Writer

TARGET = 100_000  # committed state changes per second under group commit, on 2 cores
GROUP_CASES = ("repo_concurrent_200", "repo_concurrent_1000", "repo_batched_8x100")
JOBS = 10_000
UPDATE = "UPDATE jobs SET state = ?, attempts = attempts + 1 WHERE id = ?"
INSERT_EVENT = "INSERT INTO events (at, kind, subject, data) VALUES (?, ?, ?, ?)"
STATES = ("queued", "running", "succeeded")


def job_id(n: int) -> str:
    return f"job-{n % JOBS:05d}"


def seed(path: Path) -> None:
    """Create the schema and JOBS jobs rows."""
    conn = connect_writer(path)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs (id, kind, name, root_id, state, created_at)"
        " VALUES (?, 'rscript', 'bench', ?, 'queued', 0)",
        [(job_id(n), job_id(n)) for n in range(JOBS)],
    )
    conn.execute("COMMIT")
    conn.close()


def change(n: int) -> Callable[[Tx], None]:
    """An op that makes one state change."""
    state, job = STATES[n % 3], job_id(n)

    def op(tx: Tx) -> None:
        tx.execute(UPDATE, (state, job))
        tx.emit("job.state", job, {"state": state})

    return op


def changes(start: int, count: int) -> Callable[[Tx], None]:
    """An op that makes ``count`` state changes (a request's jobs moving at once)."""
    args = [(STATES[n % 3], job_id(n)) for n in range(start, start + count)]

    def op(tx: Tx) -> None:
        tx.executemany(UPDATE, args)
        for state, job in args:
            tx.emit("job.state", job, {"state": state})

    return op


def nothing(tx: Tx) -> None:
    return None


# --- raw sqlite3 baselines: one thread, no trio ------------------------------------------------


def raw(path: Path, total: int, per_tx: int, *, many: bool = False) -> dict[str, float]:
    """Plain sqlite3, ``per_tx`` state changes per transaction (``many``: executemany)."""
    conn = connect_writer(path)
    start, cpu = time.perf_counter(), time.process_time()
    for base in range(0, total, per_tx):
        rows = [(STATES[n % 3], job_id(n)) for n in range(base, base + per_tx)]
        conn.execute("BEGIN IMMEDIATE")
        if many:
            conn.executemany(UPDATE, rows)
            conn.executemany(
                INSERT_EVENT, [(0.0, "job.state", j, json.dumps({"state": s})) for s, j in rows]
            )
        else:
            for state, job in rows:
                conn.execute(UPDATE, (state, job))
                conn.execute(INSERT_EVENT, (0.0, "job.state", job, json.dumps({"state": state})))
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    return {"per_s": total / elapsed, "cpu_us": cpu / total * 1e6, "ops_per_commit": 1.0}


# --- through the Repository -------------------------------------------------------------------


async def sequential(repo: Repository, total: int) -> int:
    for n in range(total):
        await repo.write(change(n))
    return total


async def concurrent(repo: Repository, total: int, writers: int, make: Any = change) -> int:
    each = total // writers

    async def writer(w: int) -> None:
        for n in range(w * each, (w + 1) * each):
            await repo.write(make(n))

    async with trio.open_nursery() as nursery:
        for w in range(writers):
            nursery.start_soon(writer, w)
    return each * writers


async def batched(repo: Repository, total: int, writers: int, per_op: int) -> int:
    each = total // writers // per_op

    async def writer(w: int) -> None:
        for k in range(each):
            await repo.write(changes((w * each + k) * per_op, per_op))

    async with trio.open_nursery() as nursery:
        for w in range(writers):
            nursery.start_soon(writer, w)
    return each * writers * per_op


async def nowait(repo: Repository, total: int) -> int:
    for n in range(total):
        repo.write_nowait(change(n))
        if n % 1000 == 999:
            await trio.lowlevel.checkpoint()  # a producer that yields now and then
    await repo.flush()
    return total


async def with_subscriber(repo: Repository, total: int, writers: int) -> int:
    """Concurrent writers while a live subscriber (a console) consumes every event."""
    seen = 0
    async with repo.subscribe(max_buffer=total) as subscription:

        async def consume() -> None:
            nonlocal seen
            while seen < total:
                items = await subscription.receive_batch()
                assert all(isinstance(item, Event) for item in items)
                seen += len(items)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            done = await concurrent(repo, total, writers)
    assert seen == done, (seen, done)
    return done


_busy = [0.0]
_apply = Writer._apply


def _timed_apply(self: Writer, batch: Any) -> Any:
    start = time.perf_counter()
    try:
        return _apply(self, batch)
    finally:
        _busy[0] += time.perf_counter() - start


Writer._apply = _timed_apply  # type: ignore[method-assign]  # bench only: writer-thread busy time


async def measure(
    path: Path, work: Callable[[Repository], Awaitable[int]], options: dict[str, Any]
) -> dict[str, float]:
    async with open_repository(path, **options) as repo:
        await repo.write(change(0))  # warm up the connection and the thread
        first = repo.statistics()
        _busy[0] = 0.0
        start, cpu = time.perf_counter(), time.process_time()
        done = await work(repo)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        stats = repo.statistics()
    commits = stats.commits - first.commits
    return {
        "per_s": done / elapsed,
        "cpu_us": cpu / done * 1e6,
        "commits": commits,
        "ops_per_commit": round((stats.ops - first.ops) / max(commits, 1), 1),
        "writer_busy": round(_busy[0] / elapsed, 2),
    }


Work = Callable[[int], Callable[[Repository], Awaitable[int]]]
CASES: list[tuple[str, str, Work, dict[str, Any]]] = [
    ("repo_sequential", "sequential awaits, 1 change per tx",
     lambda t: lambda r: sequential(r, t // 20), {}),
    ("repo_sequential_full", "sequential awaits, synchronous=FULL",
     lambda t: lambda r: sequential(r, max(t // 500, 20)), {"synchronous": "FULL"}),
    ("repo_noop_200", "200 writers, empty ops (overhead floor)",
     lambda t: lambda r: concurrent(r, t, 200, lambda n: nothing), {}),
    ("repo_concurrent_200", "200 concurrent writers, 1 change/op",
     lambda t: lambda r: concurrent(r, t, 200), {}),
    ("repo_concurrent_1000", "1000 concurrent writers, 1 change/op",
     lambda t: lambda r: concurrent(r, t, 1000), {}),
    ("repo_concurrent_200_full", "200 concurrent writers, synchronous=FULL",
     lambda t: lambda r: concurrent(r, t // 5, 200), {"synchronous": "FULL"}),
    ("repo_batched_8x100", "8 writers, ops of 100 changes",
     lambda t: lambda r: batched(r, t, 8, 100), {}),
    ("repo_batched_8x100_sqlite_ckpt", "same, checkpoints inside commits (old)",
     lambda t: lambda r: batched(r, t, 8, 100), {"checkpoint_interval": None}),
    ("repo_nowait", "write_nowait stream + flush, 1 change/op",
     lambda t: lambda r: nowait(r, t), {}),
    ("repo_concurrent_200_subscribed", "200 writers + 1 live subscriber",
     lambda t: lambda r: with_subscriber(r, t, 200), {}),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.repository", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the work, for a smoke run")
    parser.add_argument("--total", type=int, default=100_000, help="state changes per case")
    args = parser.parse_args()
    total = args.total // 10 if args.quick else args.total
    figures: dict[str, Any] = {
        "target_per_s": TARGET,
        "total": total,
        "sqlite": sqlite3.sqlite_version,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_before": round(os.getloadavg()[0], 2),
    }
    labels: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="wfe-bench-") as tmp:
        root = Path(tmp)

        def fresh(name: str) -> Path:
            path = root / f"{name}.db"
            seed(path)
            return path

        for key, label, count, per_tx, many in (
            ("raw_1_per_tx", "raw sqlite3, 1 change per tx", total // 20, 1, False),
            ("raw_1000_per_tx", "raw sqlite3, 1000 changes per tx", total, 1000, False),
            ("raw_1000_per_tx_many", "raw sqlite3, 1000 per tx, executemany", total, 1000, True),
        ):
            figures[key] = raw(fresh(key), count, per_tx, many=many)
            labels[key] = label
        for key, label, work, options in CASES:
            figures[key] = trio.run(measure, fresh(key), work(total), options)
            labels[key] = f"Repository: {label}"
    figures["loadavg_after"] = round(os.getloadavg()[0], 2)

    print(
        f"python {figures['python']}, sqlite {figures['sqlite']}, {figures['cpus']} cpus,"
        f" load average {figures['loadavg_before']} -> {figures['loadavg_after']}"
    )
    print(f"{'case':<62} {'changes/s':>10} {'cpu us':>7} {'ops/tx':>8} {'busy':>5}")
    for key, label in labels.items():
        f = figures[key]
        busy = f"{f['writer_busy']:.0%}" if "writer_busy" in f else ""
        print(
            f"{label:<62} {f['per_s']:>10,.0f} {f['cpu_us']:>7.1f}"
            f" {f['ops_per_commit']:>8,.1f} {busy:>5}"
        )
    print("cpu us = process CPU (both threads) per change; busy = writer thread busy / wall time")
    met = []
    for key in GROUP_CASES:
        per_s = figures[key]["per_s"]
        if per_s >= TARGET:
            met.append(key)
        else:
            short = 100 * (1 - per_s / TARGET)
            print(f"target missed: {key} {per_s:,.0f}/s is {short:.0f}% below {TARGET:,}/s")
    figures["target_met_by"] = met
    figures["target_met"] = bool(met)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
