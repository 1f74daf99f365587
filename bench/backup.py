"""What ``wfe backup`` costs: how long a copy of a repository takes, and what a backup running
beside the writer does to its commit latency.

Run from the repository root: ``python -m bench.backup [--jobs N] [--rounds R]``. It builds a
repository of N finished jobs, each with 4 KiB of output and three events (the size a real
workload leaves), then alternates rounds: the writer commits one small state change after
another for as long as a backup takes, once alone and once while ``wfe.engine.repository.backup.backup``
copies the file in a process of its own (as the CLI does). It prints, per case,
the median over rounds of the backup's duration and MB/s and the commit latency p50 / p99 /
max, with the load average. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench._common import machine, machine_line, percentile
from wfe.engine.repository import Repository, Tx, open_repository
from wfe.engine.repository.repository import WAL_MAX_MB

OUTPUT = b"x" * 4096
COPY = """
import json, sys
from pathlib import Path
from wfe.engine.repository.backup import backup
dest = Path(sys.argv[2])
dest.unlink(missing_ok=True)
report = backup(Path(sys.argv[1]), dest)
print(json.dumps({"seconds": report.seconds, "bytes": report.bytes}))
"""


def fill(tx: Tx, *, start: int, count: int) -> None:
    for n in range(start, start + count):
        job = f"j{n:07d}"
        tx.execute(
            "INSERT INTO jobs (id, kind, name, root_id, state, created_at, ended_at)"
            " VALUES (?, 'rscript', 'noop', ?, 'succeeded', 0, 1)",
            (job, job),
        )
        tx.execute(
            "INSERT INTO output (job_id, attempt, seq, stream, data) VALUES (?, 1, 0, 'stdout', ?)",
            (job, OUTPUT),
        )
        for state in ("queued", "running", "succeeded"):
            tx.emit("job.state", job, {"state": state})


def tick(tx: Tx, *, n: int) -> None:
    tx.emit("bench.tick", "bench", {"n": n})


async def commits_for(repo: Repository, stop: trio.Event) -> list[float]:
    """Commit one small change after another until ``stop``; return each one's seconds."""
    latencies: list[float] = []
    n = 0
    while not stop.is_set():
        n += 1
        started = time.perf_counter()
        await repo.write(functools.partial(tick, n=n))
        latencies.append(time.perf_counter() - started)
    return latencies


async def round_(
    repo: Repository, db: Path, dest: Path, *, with_backup: bool, seconds: float
) -> dict[str, Any]:
    stop = trio.Event()
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:

        async def measure() -> None:
            result["latencies"] = await commits_for(repo, stop)

        nursery.start_soon(measure)
        if with_backup:  # in a process of its own, as `wfe backup` runs
            window = time.perf_counter()
            done = await trio.run_process(
                [sys.executable, "-c", COPY, str(db), str(dest)], capture_stdout=True
            )
            report = json.loads(done.stdout)
            result["backup_s"], result["bytes"] = report["seconds"], report["bytes"]
            result["window_s"] = time.perf_counter() - window  # the process's start included
        else:
            await trio.sleep(seconds)
        stop.set()
    return result


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "commit_p50_ms": round(1000 * percentile(latencies, 50), 3),
        "commit_p99_ms": round(1000 * percentile(latencies, 99), 3),
        "commit_max_ms": round(1000 * max(latencies), 3),
        "commits": len(latencies),
    }


async def main(jobs: int, rounds: int, wal_max_mb: float | None) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "machine": machine(),
        "jobs": jobs,
        "rounds": rounds,
        "wal_max_mb": wal_max_mb,
    }
    with tempfile.TemporaryDirectory(prefix="wfe-bench-backup-") as tmp:
        db, dest = Path(tmp) / "wfe.db", Path(tmp) / "copy.db"
        async with open_repository(db, wal_max_mb=wal_max_mb) as repo:
            for start in range(0, jobs, 1000):
                await repo.write(
                    functools.partial(fill, start=start, count=min(1000, jobs - start))
                )
            cases: dict[str, list[dict[str, Any]]] = {"alone": [], "during_backup": []}
            seconds = 1.0
            for _ in range(rounds):  # interleaved: each round measures both cases
                during = await round_(repo, db, dest, with_backup=True, seconds=seconds)
                seconds = during["window_s"]  # the same window, without a backup
                cases["during_backup"].append(during)
                cases["alone"].append(
                    await round_(repo, db, dest, with_backup=False, seconds=seconds)
                )
        for name, results in cases.items():
            per_round = [summary(r["latencies"]) for r in results]
            figures[name] = {
                key: round(statistics.median(r[key] for r in per_round), 3) for key in per_round[0]
            }
        backups = cases["during_backup"]
        figures["db_mb"] = round(statistics.median(r["bytes"] for r in backups) / 1e6, 1)
        figures["backup_s"] = round(statistics.median(r["backup_s"] for r in backups), 3)
        figures["backup_mb_per_s"] = round(figures["db_mb"] / figures["backup_s"], 1)
    figures["machine"]["loadavg_after"] = round(os.getloadavg()[0], 2)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--wal-max-mb",
        type=float,
        default=WAL_MAX_MB,
        help=f"the repository's WAL limit (default {WAL_MAX_MB}); 0: none (PASSIVE only)",
    )
    args = parser.parse_args()
    figures = trio.run(main, args.jobs, args.rounds, args.wal_max_mb or None)
    print(machine_line(figures["machine"]))
    print(
        f"repository {figures['db_mb']} MB ({args.jobs} jobs): backup {figures['backup_s']} s"
        f" ({figures['backup_mb_per_s']} MB/s), median of {args.rounds} rounds"
    )
    for name in ("alone", "during_backup"):
        f = figures[name]
        print(
            f"  commits {name:14}: p50 {f['commit_p50_ms']} ms, p99 {f['commit_p99_ms']} ms,"
            f" max {f['commit_max_ms']} ms ({f['commits']:.0f} commits)"
        )
    print(json.dumps(figures))
