"""XMPP throughput with few agents and with more, in interleaved rounds (for bench.many_agents).

Each round runs, for every agent count, a fresh engine on its own workspace with that many
``python -m wfe.agents --xmpp`` processes (one agent each, as ``bench.xmpp_dispatch`` does),
a warm-up burst, then a burst of noop jobs: jobs/s and dispatch->result p50/p99. The counts
take turns within a round, so a change in the machine's load touches all of them alike; the
figures are the medians over the rounds.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bench._common import Profiling, Tracker, burst, wait_for_agents
from bench.xmpp_dispatch import SCRIPT, Setup, engine_config, start_xmpp_agents
from wfe.engine.devtools.prosody import ProsodyServer
from wfe.engine.runtime.daemon import open_engine


async def one_run(
    server: ProsodyServer,
    root: Path,
    scripts: Path,
    agents: int,
    slots: int,
    jobs: int,
    profiling: Profiling | None = None,
) -> dict[str, Any]:
    """An engine with ``agents`` XMPP agent processes: the figures of one burst of ``jobs``."""
    setup = Setup(transport="xmpp", agents=agents, slots=slots, root=root, server=server)
    config = engine_config(setup, scripts)
    tracker = Tracker()
    processes: list[trio.Process] = []
    try:
        async with open_engine(config) as engine, trio.open_nursery() as nursery:
            await nursery.start(tracker.run, engine.repo)
            processes = await start_xmpp_agents(setup, config)
            with trio.fail_after(60):
                await wait_for_agents(engine, agents)
            pids = [p.pid for p in processes]
            await burst(engine, tracker, 2 * agents * slots, script=SCRIPT, pids=pids)  # warm up
            if profiling is not None:
                with profiling.measure(jobs):
                    figures = await burst(
                        engine, tracker, jobs, script=SCRIPT, pids=pids, server_pid=server.pid
                    )
            else:
                figures = await burst(
                    engine, tracker, jobs, script=SCRIPT, pids=pids, server_pid=server.pid
                )
            nursery.cancel_scope.cancel()
    finally:
        for process in processes:
            process.kill()
            await process.wait()
    return figures


async def compare(
    server: ProsodyServer,
    root: Path,
    scripts: Path,
    *,
    counts: tuple[int, ...],
    slots: int,
    jobs: int,
    rounds: int,
    profile: str | None = None,
) -> dict[str, Any]:
    """Interleaved rounds of ``one_run`` per count; per count the runs and their medians."""
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    profiles = {n: Profiling() for n in counts} if profile else {}
    started = time.perf_counter()
    for r in range(rounds):
        for n in counts:
            print(f"throughput round {r + 1}/{rounds}: {n} agents x {slots} slots", file=sys.stderr)
            runs[n].append(
                await one_run(
                    server, root / f"tp-{r}-{n}", scripts, n, slots, jobs, profiles.get(n)
                )
            )
    result: dict[str, Any] = {"rounds": rounds, "jobs": jobs, "slots": slots}
    for n in counts:
        result[str(n)] = {
            key: statistics.median(run[key] for run in runs[n])
            for key in ("per_s", "dispatch_p50_ms", "dispatch_p99_ms", "engine_cpu_ms",
                        "agents_cpu_ms", "server_cpu_ms", "cpu_busy")
        } | {"per_s_runs": [round(run["per_s"], 1) for run in runs[n]],
             "failed": sum(run["failed"] for run in runs[n])}  # fmt: skip
    if profile:
        for n, profiling in profiles.items():
            print(profiling.dump(f"{profile}.{n}agents.pstats", top=25), file=sys.stderr)
    few, many = str(min(counts)), str(max(counts))
    result["ratio"] = result[many]["per_s"] / result[few]["per_s"]
    result["seconds"] = time.perf_counter() - started
    return result
