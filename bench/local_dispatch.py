"""Trivial RScript jobs end to end through real local agents: jobs per second and latency.

Run from the repository root: ``python -m bench.local_dispatch [--quick] [--jobs N]
[--configs 1x2,2x2,...] [--latency-jobs N]``. Each configuration (agents x slots per agent) gets
its own engine (``open_engine`` on a temporary workspace from ``wfe.engine.cli.demo.make_workspace``),
which starts its agents as real processes on the Unix socket; every job is the shipped
``noop`` RScript: queued, committed, signed, dispatched, verified, spooled, run as a child
process, spooled again, reported, committed, acknowledged.

Two measurements per engine:

* throughput: a burst of N jobs submitted at once; jobs/s from the first submit to the last
  committed result, and CPU per job in the engine and in the agents (with their scripts);
* latency: jobs one at a time (window 1) and with as many in flight as there are slots;
  submit -> committed result, and dispatch -> committed result, split into stages.

Times come from the repository's committed event stream (a subscriber), so "committed" means
committed. The floors beside them: a bare ``sh`` fork/exec, and the file+directory fsync the
agent's spool makes durable results with. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench._common import (
    Profiling,
    Stopwatch,
    Tracker,
    burst,
    latencies,
    machine,
    machine_line,
    missed,
    percentile,
    spool_agent_pids,
    submit,
    table,
    wait_for_agents,
    workspace,
)
from wfe.engine.runtime.daemon import Engine, open_engine

TARGET_PER_S = 500.0  # trivial jobs per second end to end through two local agents
TARGET_P50_MS = 5.0
SCRIPT = "noop"


# --- floors -------------------------------------------------------------------------------


def fsync_floor(directory: Path, count: int = 50) -> float:
    """Milliseconds for one small file write + fsync + directory fsync (what the spool does)."""
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for n in range(count):
        with open(directory / f"f{n}", "wb") as f:
            f.write(b"{}")
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return (time.perf_counter() - start) / count * 1e3


async def spawn_floor(count: int, concurrency: int) -> dict[str, float]:
    """``sh -c true`` run ``count`` times, ``concurrency`` at once: runs per second, ms each."""
    latencies: list[float] = []

    async def worker(k: int) -> None:
        for _ in range(k):
            start = time.perf_counter()
            await trio.run_process(["sh", "-c", "true"])
            latencies.append(time.perf_counter() - start)

    with Stopwatch() as sw:
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker, count // concurrency)
    return {"per_s": len(latencies) / sw.wall, "p50_ms": percentile(latencies, 50) * 1e3}


# --- one engine ---------------------------------------------------------------------------


async def window(engine: Engine, tracker: Tracker, n: int, width: int) -> dict[str, Any]:
    """Keep ``width`` jobs in flight until ``n`` have finished (a closed loop)."""
    submitted: dict[str, float] = {}

    async def lane(k: int) -> None:
        for _ in range(k):
            await tracker.wait(await submit(engine, SCRIPT, submitted))

    with Stopwatch() as sw:
        async with trio.open_nursery() as nursery:
            for _ in range(width):
                nursery.start_soon(lane, n // width)
    figures = latencies(tracker, submitted)
    figures.update(jobs=len(submitted), per_s=len(submitted) / sw.wall, window=width)
    return figures


async def run_config(
    root: Path,
    agents: int,
    slots: int,
    jobs: int,
    latency_jobs: int,
    profiling: Profiling | None = None,
) -> dict[str, Any]:
    config = workspace(root / f"ws-{agents}x{slots}", agents=agents, slots=slots)
    tracker = Tracker()
    figures: dict[str, Any] = {"agents": agents, "slots": slots}
    started = time.perf_counter()
    async with open_engine(config) as engine, trio.open_nursery() as nursery:
        await nursery.start(tracker.run, engine.repo)
        await wait_for_agents(engine, agents)
        figures["startup_s"] = time.perf_counter() - started
        pids = spool_agent_pids(engine)
        await burst(engine, tracker, 2 * agents * slots, script=SCRIPT, pids=pids)  # warm up
        if profiling is None:
            figures["burst"] = await burst(engine, tracker, jobs, script=SCRIPT, pids=pids)
        else:
            with profiling.measure(jobs):
                figures["burst"] = await burst(engine, tracker, jobs, script=SCRIPT, pids=pids)
        if latency_jobs:
            figures["sequential"] = await window(engine, tracker, latency_jobs, 1)
            figures["window"] = await window(engine, tracker, latency_jobs, agents * slots)
        nursery.cancel_scope.cancel()
    return figures


# --- main ---------------------------------------------------------------------------------


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for item in text.split(","):
        agents, _, slots = item.strip().partition("x")
        if not (agents.isdigit() and slots.isdigit()) or int(agents) < 1 or int(slots) < 1:
            raise SystemExit(f"--configs: {item!r} is not AGENTSxSLOTS, e.g. 2x4")
        configs.append((int(agents), int(slots)))
    return configs


HEADLINE = (2, 2)  # two local agents with the default slots: the configuration the target names


async def run(
    root: Path, args: argparse.Namespace, figures: dict[str, Any], profiling: Profiling | None
) -> None:
    figures["floor_fsync_ms"] = await trio.to_thread.run_sync(fsync_floor, root / "fsync")
    figures["floor_spawn_1"] = await spawn_floor(args.jobs // 5, 1)
    figures["floor_spawn_4"] = await spawn_floor(args.jobs // 2, 4)
    figures["configs"] = {}
    for agents, slots in args.configs:
        detailed = (agents, slots) == HEADLINE or args.latency_all
        figures["configs"][f"{agents}x{slots}"] = await run_config(
            root, agents, slots, args.jobs, args.latency_jobs if detailed else 0, profiling
        )


def report(figures: dict[str, Any]) -> list[str]:
    print(machine_line(figures))
    print(
        f"floors: sh fork/exec {figures['floor_spawn_1']['p50_ms']:.2f} ms p50 one at a time,"
        f" {figures['floor_spawn_4']['per_s']:,.0f}/s with 4 at once;"
        f" spool write+fsync+dir fsync {figures['floor_fsync_ms']:.2f} ms"
    )
    print()
    rows = []
    for f in figures["configs"].values():
        b = f["burst"]
        rows.append({"config": f"{f['agents']} agents x {f['slots']} slots", **b})
    print(f"Burst of {figures['jobs']:,} noop jobs (submit all, wait for all)")
    print(table(rows, [
        ("config", "agents x slots", ""), ("per_s", "jobs/s", ",.0f"), ("p50_ms", "p50 ms", ",.1f"),
        ("p99_ms", "p99 ms", ",.1f"), ("dispatch_p50_ms", "disp->res p50", ",.1f"),
        ("dispatch_p99_ms", "disp->res p99", ",.1f"), ("stage_accepted_p50_ms", "disp->accepted p50", ",.1f"),
        ("stage_run_to_commit_p50_ms", "accepted->res p50", ",.1f"), ("engine_cpu_ms", "engine cpu ms/job", ".2f"),
        ("agents_cpu_ms", "agents cpu ms/job", ".2f"), ("cpu_busy", "cpus busy", ".0%"),
        ("failed", "failed", ""),
    ]))  # fmt: skip
    rows = []
    for key, f in figures["configs"].items():
        for mode, label in (("sequential", "one at a time"), ("window", "one per slot in flight")):
            if mode in f:
                rows.append({"config": f"{key}: {label}", **f[mode]})
    if rows:
        print()
        print(
            "Latency (closed loop): submit -> committed result, dispatch -> committed result, stages at p50"
        )
        print(table(rows, [
            ("config", "agents x slots: load", ""), ("per_s", "jobs/s", ",.0f"), ("p50_ms", "p50 ms", ",.2f"),
            ("p99_ms", "p99 ms", ",.2f"), ("dispatch_p50_ms", "disp->res p50", ",.2f"),
            ("dispatch_p99_ms", "disp->res p99", ",.2f"), ("stage_queued_p50_ms", "submit->disp", ",.2f"),
            ("stage_accepted_p50_ms", "disp->accepted", ",.2f"),
            ("stage_run_to_commit_p50_ms", "accepted->res", ",.2f"),
        ]))  # fmt: skip
    print()
    lines = []
    head = figures["configs"].get(f"{HEADLINE[0]}x{HEADLINE[1]}")
    two = {k: v for k, v in figures["configs"].items() if v["agents"] == 2}
    if two:
        best_key = max(two, key=lambda k: two[k]["burst"]["per_s"])
        best = two[best_key]["burst"]["per_s"]
        lines.append(missed(f"throughput, two agents (best: {best_key})", best, TARGET_PER_S,
                            higher_is_better=True, unit=" jobs/s")
                     or f"target met: {best:,.0f} jobs/s through two agents ({best_key})")  # fmt: skip
    if head and "sequential" in head:
        p50 = head["sequential"]["p50_ms"]
        lines.append(missed(f"p50 latency one at a time ({HEADLINE[0]}x{HEADLINE[1]})", p50, TARGET_P50_MS,
                            higher_is_better=False, unit=" ms")
                     or f"target met: p50 {p50:.2f} ms one at a time")  # fmt: skip
    for line in lines:
        print(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.local_dispatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a fifth of the jobs, for a smoke run")
    parser.add_argument("--jobs", type=int, default=300, help="jobs per burst (default 300)")
    parser.add_argument(
        "--latency-jobs", type=int, default=120, help="jobs per latency run (default 120)"
    )
    parser.add_argument("--configs", type=parse_configs, default=parse_configs("1x2,1x4,2x1,2x2,2x4,2x8"),
                        help="agents x slots to compare (default 1x2,1x4,2x1,2x2,2x4,2x8)")  # fmt: skip
    parser.add_argument(
        "--latency-all", action="store_true", help="latency runs for every configuration"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="cProfile the engine's trio thread during the bursts (all configs), write"
        " pstats to FILE and print the top functions and CPU per thread to stderr",
    )
    parser.add_argument("--profile-wall", action="store_true",
                        help="with --profile: time functions by wall time, not the thread's CPU time")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.latency_jobs = max(args.jobs // 5, 20), max(args.latency_jobs // 5, 8)
    figures: dict[str, Any] = {**machine(), "jobs": args.jobs, "latency_jobs": args.latency_jobs,
                               "script": SCRIPT, "target_per_s": TARGET_PER_S, "target_p50_ms": TARGET_P50_MS}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="wfe-bench-") as tmp:
        profiling = Profiling(cpu=not args.profile_wall) if args.profile else None
        trio.run(run, Path(tmp), args, figures, profiling)
    if profiling is not None:
        print(profiling.dump(args.profile), file=sys.stderr)
    figures["loadavg_after"] = round(os.getloadavg()[0], 2)
    figures["verdicts"] = report(figures)
    two = [v["burst"]["per_s"] for v in figures["configs"].values() if v["agents"] == 2]
    figures["best_two_agent_per_s"] = max(two) if two else None
    head = figures["configs"].get(f"{HEADLINE[0]}x{HEADLINE[1]}", {})
    figures["headline_p50_ms"] = head.get("sequential", {}).get("p50_ms")
    figures["throughput_target_met"] = bool(two) and max(two) >= TARGET_PER_S
    figures["latency_target_met"] = (
        figures["headline_p50_ms"] is not None and figures["headline_p50_ms"] < TARGET_P50_MS
    )
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
