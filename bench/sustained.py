"""A long run of trivial jobs through real local agents: is the disk bounded, is the loop free?

Run from the repository root: ``python -m bench.sustained [--jobs 50000] [--agents 2]
[--slots 8] [--window 256] [--wal-max-mb 64]``, or ``--pages`` for how many bytes of WAL a job's
commits append on the schema before and after migrations 4 and 5 (no engine; no checkpoint). One engine (``open_engine`` on a temporary
workspace) with its local agents as real processes; ``--window`` jobs of the shipped ``noop``
RScript are kept in flight until ``--jobs`` have ended, which keeps the agents saturated: the
engine's highest sustained throughput, for as long as it takes.

While it runs, a sampler reads every 50 ms the size of the repository's WAL file and database
and the engine's resident memory; the writer itself records the WAL's size after every commit
(``wal_peak_bytes``) and the watchdog the longest step that held the event loop. Every 10 s a
progress line is printed. The last line is one JSON object with at least ``jobs_per_s``,
``wal_peak_mb``, ``db_mb``, ``rss_peak_mb`` and ``loop_max_hold_ms``. Targets (issue 12):
the WAL never above ``[repository] wal_max_mb``, no loop hold of 100 ms or more.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from bench._common import (
    Tracker,
    cpu_seconds,
    machine,
    machine_line,
    missed,
    rss_bytes,
    spool_agent_pids,
    wait_for_agents,
    workspace,
)
from wfe.engine.config import RepositorySection
from wfe.engine.repository import Tx, open_repository, schema
from wfe.engine.runtime.daemon import open_engine

SCRIPT = "noop"
TARGET_LOOP_HOLD_MS = 100.0
MB = 1024 * 1024


class Sampler:
    """Peaks of the WAL and database file sizes and of this process's RSS, read every period."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.wal = Path(f"{db}-wal")
        self.wal_peak = self.db_peak = self.rss_peak = 0
        self.samples = 0

    def sample(self) -> None:
        self.samples += 1
        self.wal_peak = max(self.wal_peak, _size(self.wal))
        self.db_peak = max(self.db_peak, _size(self.db))
        self.rss_peak = max(self.rss_peak, rss_bytes())

    async def run(self, period: float) -> None:
        while True:
            self.sample()
            await trio.sleep(period)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def run(root: Path, args: argparse.Namespace, figures: dict[str, Any]) -> None:
    config = workspace(root / "ws", agents=args.agents, slots=args.slots)
    config = attrs.evolve(config, repository=RepositorySection(wal_max_mb=args.wal_max_mb))
    tracker = Tracker(times=False)
    sampler = Sampler(config.repository_path)
    done = 0
    async with open_engine(config) as engine, trio.open_nursery() as nursery:
        await nursery.start(tracker.run, engine.repo)
        await wait_for_agents(engine, args.agents)
        pids = spool_agent_pids(engine)
        nursery.start_soon(sampler.run, 0.05)
        rss_start = rss_bytes()
        agents_cpu = sum(cpu_seconds(p) for p in pids)
        failed = 0

        async def lane(count: int) -> None:
            nonlocal done, failed
            for _ in range(count):
                job = await engine.run_rscript(SCRIPT, {})
                if await tracker.wait(job) != "succeeded":
                    failed += 1
                done += 1

        async def progress(started: float) -> None:
            last, last_done = started, 0
            while True:
                await trio.sleep(10)
                now = time.perf_counter()
                stats = engine.repo.statistics()
                print(
                    f"  {done:>7,} jobs  {(done - last_done) / (now - last):6,.0f}/s"
                    f"  wal {_size(sampler.wal) / MB:6.1f} MB (peak {stats.wal_peak_bytes / MB:.1f})"
                    f"  db {_size(sampler.db) / MB:6.1f} MB  rss {rss_bytes() / MB:6.0f} MB"
                    f"  truncations {stats.wal_truncations}"
                    f"  loop max {engine.watchdog.max_held * 1e3:.0f} ms",
                    flush=True,
                )
                last, last_done = now, done

        engine.watchdog.max_held = 0.0  # from here on: start-up is not the sustained run
        cpu_start = time.process_time()
        started = time.perf_counter()
        async with trio.open_nursery() as lanes:
            lanes.start_soon(progress, started)
            width = min(args.window, args.jobs)
            async with trio.open_nursery() as workers:
                for k in range(width):
                    workers.start_soon(
                        lane, args.jobs // width + (1 if k < args.jobs % width else 0)
                    )
            lanes.cancel_scope.cancel()
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_start
        sampler.sample()
        stats = engine.repo.statistics()
        figures.update(
            jobs=done,
            failed=failed,
            seconds=round(wall, 1),
            jobs_per_s=done / wall,
            wal_limit_mb=args.wal_max_mb,
            wal_peak_mb=max(sampler.wal_peak, stats.wal_peak_bytes) / MB,
            wal_end_mb=_size(sampler.wal) / MB,
            wal_truncations=stats.wal_truncations,
            wal_pause_max_ms=stats.wal_pause_max * 1e3,
            checkpoints=stats.checkpoints,
            db_mb=_size(sampler.db) / MB,
            rss_start_mb=rss_start / MB,
            rss_peak_mb=sampler.rss_peak / MB,
            loop_max_hold_ms=engine.watchdog.max_held * 1e3,
            engine_cpu_ms=cpu / max(done, 1) * 1e3,
            agents_cpu_ms=(sum(cpu_seconds(p) for p in pids) - agents_cpu) / max(done, 1) * 1e3,
            commits=stats.commits,
            ops_per_commit_avg=stats.ops_per_commit_avg,
            samples=sampler.samples,
        )
        nursery.cancel_scope.cancel()


# --- WAL pages per job: the schema before and after migrations 4 and 5 ------------------------


def _noop_job_commits(job: str) -> list[Callable[[Tx], None]]:
    """The SQL of a noop job's three commits as engine/attempts.py writes them: created and
    dispatched; running; ended (attempt and job), each with its events."""

    def dispatched(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO jobs (id, kind, name, root_id, params, state, requirements, created_at)"
            " VALUES (?, 'rscript', 'noop', ?, '{}', 'dispatched', '{}', ?)",
            (job, job, tx.at),
        )
        tx.execute(
            "INSERT INTO attempts (job_id, attempt, state, agent, dispatched_at)"
            " VALUES (?, 1, 'dispatched', 'local-1', ?)",
            (job, tx.at),
        )
        tx.emit("job.created", job, {"name": "noop", "kind": "rscript"})
        tx.emit("attempt.state", job, {"attempt": 1, "state": "dispatched", "agent": "local-1"})

    def running(tx: Tx) -> None:
        tx.execute(
            "UPDATE attempts SET state = 'running', started_at = ? WHERE job_id = ? AND attempt = 1",
            (tx.at, job),
        )
        tx.emit("attempt.state", job, {"attempt": 1, "state": "running", "agent": "local-1"})

    def ended(tx: Tx) -> None:
        tx.execute(
            "UPDATE attempts SET state = 'succeeded', exit_code = 0, ended_at = ?, duration = 0.001,"
            " chunks = 0 WHERE job_id = ? AND attempt = 1",
            (tx.at, job),
        )
        tx.emit("attempt.state", job, {"attempt": 1, "state": "succeeded", "exit_code": 0})
        tx.execute("UPDATE jobs SET state = 'succeeded', ended_at = ? WHERE id = ?", (tx.at, job))
        tx.emit("job.state", job, {"state": "succeeded"})

    return [dispatched, running, ended]


async def wal_per_job(root: Path, migrations: int, jobs: int, per_commit: int) -> float:
    """Bytes appended to the WAL per job (no checkpoint runs at all) on the schema of the
    first ``migrations`` migrations, with ``per_commit`` jobs' steps in each commit."""
    all_migrations = list(schema.MIGRATIONS)
    schema.MIGRATIONS[:] = all_migrations[:migrations]
    try:
        path = root / f"pages-{migrations}-{per_commit}.db"
        async with open_repository(
            path, checkpoint_interval=None, wal_max_mb=None, inline_max=10**6
        ) as repo:
            await repo.write(lambda tx: tx.execute("PRAGMA wal_autocheckpoint = 0"))
            for k in range(200):  # a database that already holds jobs
                for step in _noop_job_commits(f"w{k:06d}"):
                    await repo.write(step)
            before = _size(Path(f"{path}-wal"))
            for start in range(0, jobs, per_commit):
                steps = [_noop_job_commits(f"j{k:06d}") for k in range(start, start + per_commit)]
                for n in range(3):
                    for job_steps in steps:
                        repo.write_nowait(job_steps[n])
                    await repo.flush()
            return (_size(Path(f"{path}-wal")) - before) / jobs
    finally:
        schema.MIGRATIONS[:] = all_migrations


async def pages(root: Path, figures: dict[str, Any]) -> None:
    jobs = 2000
    for per_commit in (1, 8):
        for label, migrations in (("before", 3), ("after", len(schema.MIGRATIONS))):
            wal = await wal_per_job(root, migrations, jobs, per_commit)
            figures[f"wal_kb_per_job_{per_commit}_per_commit_{label}"] = wal / 1024
            print(
                f"{per_commit} job(s) per commit, schema {label} (migrations 1-{migrations}):"
                f" {wal / 1024:.1f} KB of WAL per job ({wal / (4096 + 24):.2f} pages)"
            )


def report(figures: dict[str, Any]) -> list[str]:
    print(machine_line(figures))
    print(
        f"{figures['jobs']:,} {SCRIPT} jobs through {figures['agents']} local agents x"
        f" {figures['slots']} slots, {figures['window']} in flight:"
        f" {figures['jobs_per_s']:,.0f} jobs/s over {figures['seconds']:,.0f} s"
        f" ({figures['failed']} failed)"
    )
    print(
        f"WAL peak {figures['wal_peak_mb']:.1f} MB (limit {figures['wal_limit_mb']} MB,"
        f" {figures['wal_truncations']} truncations, the longest pausing the writer"
        f" {figures['wal_pause_max_ms']:.0f} ms), database {figures['db_mb']:.1f} MB,"
        f" RSS {figures['rss_start_mb']:.0f} -> peak {figures['rss_peak_mb']:.0f} MB,"
        f" longest loop hold {figures['loop_max_hold_ms']:.1f} ms,"
        f" engine CPU {figures['engine_cpu_ms']:.2f} ms/job"
    )
    lines = [
        missed("WAL peak", figures["wal_peak_mb"], figures["wal_limit_mb"],
               higher_is_better=False, unit=" MB")
        or f"target met: WAL peak {figures['wal_peak_mb']:.1f} MB <= {figures['wal_limit_mb']} MB",
        (f"target met: longest loop hold {figures['loop_max_hold_ms']:.1f} ms < {TARGET_LOOP_HOLD_MS:.0f} ms"
         if figures["loop_max_hold_ms"] < TARGET_LOOP_HOLD_MS
         else f"target missed: longest loop hold {figures['loop_max_hold_ms']:.1f} ms"
              f" (limit {TARGET_LOOP_HOLD_MS:.0f} ms)"),
    ]  # fmt: skip
    for line in lines:
        print(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sustained", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs in all (default 50000)")
    parser.add_argument("--agents", type=int, default=2, help="local agents (default 2)")
    parser.add_argument("--slots", type=int, default=8, help="slots per agent (default 8)")
    parser.add_argument("--window", type=int, default=256, help="jobs in flight (default 256)")
    parser.add_argument("--wal-max-mb", type=int, default=64,
                        help="[repository] wal_max_mb of the engine (default 64)")  # fmt: skip
    parser.add_argument("--pages", action="store_true",
                        help="instead: WAL bytes per job of a noop job's commits, on the schema"
                        " before and after migrations 4-5 (no engine, no checkpoints)")  # fmt: skip
    args = parser.parse_args()
    if args.pages:
        figures: dict[str, Any] = machine()
        with tempfile.TemporaryDirectory(prefix="wfe-bench-") as tmp:
            trio.run(pages, Path(tmp), figures)
        print(json.dumps(figures, sort_keys=True))
        return
    for name in ("jobs", "agents", "slots", "window", "wal_max_mb"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    figures = {**machine(), "agents": args.agents, "slots": args.slots,
                               "window": args.window, "script": SCRIPT}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="wfe-bench-") as tmp:
        trio.run(run, Path(tmp), args, figures)
    figures["loadavg_after"] = round(os.getloadavg()[0], 2)
    figures["verdicts"] = report(figures)
    figures["wal_target_met"] = figures["wal_peak_mb"] <= figures["wal_limit_mb"]
    figures["loop_target_met"] = figures["loop_max_hold_ms"] < TARGET_LOOP_HOLD_MS
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
