"""A thousand agents on one engine over XMPP: registration, memory, idle CPU, dispatch, losses.

Run from the repository root: ``python -m bench.many_agents --agents 1000 [--per-process 100]
[--slots 2] [--idle-seconds 30] [--rounds 3] [--no-throughput] [--profile PREFIX]``.

One private Prosody (``wfe.engine.devtools.prosody``, plaintext, loopback) with an account per
agent, one engine (``open_engine`` in this process, ``[xmpp]``), and the agents as real XMPP
agents run ``--per-process`` to a process by ``python -m wfe.agents.many`` (each a whole agent:
its spool, keeper, XMPP session). Measured, in order:

- seconds from starting the agent processes until every agent's ``connected`` is committed;
- the engine's RSS growth per agent (this process: the engine and this harness);
- the engine's CPU (percent of one CPU) while the agents idle, sending heartbeats;
- a burst of noop jobs across them (after a warm-up burst): jobs/s, dispatch->result p50/p99;
- long jobs on every agent, then SIGKILL of whole agent processes holding 10% of the agents:
  seconds until the engine declares each of them lost (target: the heartbeat deadline + 5 s)
  and until all their attempts are dispatched again (after their lease, ``--lease``, runs out:
  the engine re-runs lost work only once the agent's keeper has killed it);
- XMPP throughput with 2 and with 8 agents (``bench.many_agents_throughput``, interleaved
  rounds, medians): the target is 8 at least 90% of 2.

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from bench._common import (
    Profiling,
    Tracker,
    burst,
    machine,
    machine_line,
    missed,
    rss_bytes,
)
from bench.many_agents_hosts import Hosts, Watch, cpu_of, keeper_pids, keepers, stop_keepers
from bench.many_agents_throughput import compare
from bench.xmpp_dispatch import ENGINE_USER, SCRIPT, Setup, engine_config
from wfe.engine.devtools.prosody import ProsodyServer
from wfe.engine.runtime.daemon import Engine, open_engine

TARGET_REGISTERED_S = 60.0
TARGET_IDLE_CPU_PERCENT = 10.0
TARGET_DETECT_MARGIN_S = 5.0  # losses detected within heartbeat_deadline + this
TARGET_THROUGHPUT_RATIO = 0.9  # jobs/s with 8 agents / with 2
HEARTBEAT_DEADLINE = 10.0  # the engine's default
LONG_SECONDS = 600.0  # the jobs held while agents are killed


async def many(
    server: ProsodyServer, root: Path, scripts: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The thousand-agent measurements (see the module doc)."""
    setup = Setup(transport="xmpp", agents=0, slots=args.slots, root=root / "engine", server=server)
    config = engine_config(setup, scripts)
    agents_section = attrs.evolve(
        config.agents, heartbeat_deadline=HEARTBEAT_DEADLINE, lease=args.lease
    )
    config = attrs.evolve(config, agents=agents_section)
    watch, tracker, hosts = Watch(args.agents), Tracker(), Hosts()
    figures: dict[str, Any] = {
        "heartbeat_s": args.heartbeat,
        "heartbeat_deadline_s": HEARTBEAT_DEADLINE,
        "lease_s": args.lease,
    }
    profiles = {p: Profiling() for p in ("register", "idle", "burst")} if args.profile else {}
    try:
        async with open_engine(config) as engine, trio.open_nursery() as nursery:
            await nursery.start(watch.run, engine.repo)
            await nursery.start(tracker.run, engine.repo)
            rss_before = rss_bytes()
            before = _cpus(server, hosts, root)
            started = time.perf_counter()
            with _measure(profiles.get("register")):
                await hosts.start(server, root / "agents", config.path(config.engine.public_key),
                                  agents=args.agents, per=args.per_process, slots=args.slots, heartbeat=args.heartbeat)  # fmt: skip
                with trio.fail_after(args.register_timeout):
                    await watch.all_connected.wait()
            figures["registered_s"] = time.perf_counter() - started
            figures["register_cpu_s"] = _spent(before, _cpus(server, hosts, root))
            figures["hosts"] = len(hosts.processes)
            print(f"{args.agents} agents registered in {figures['registered_s']:.1f} s; CPU seconds:"
                  f" {figures['register_cpu_s']}", file=sys.stderr)  # fmt: skip
            await trio.sleep(3)  # the last hellos' leases and first heartbeats
            figures |= await idle(engine, server, hosts, args, profiles.get("idle"))
            figures["engine_rss_per_agent_kib"] = (rss_bytes() - rss_before) / args.agents / 1024
            figures["host_rss_per_agent_kib"] = hosts.rss() / args.agents / 1024
            figures["keepers"], rss = keepers(root)
            figures["keeper_rss_per_agent_kib"] = rss / args.agents / 1024
            pids = [p.pid for p in hosts.processes]
            print("warm-up burst", file=sys.stderr)
            await burst(
                engine,
                tracker,
                args.agents * args.slots,
                script=SCRIPT,
                pids=pids,
                server_pid=server.pid,
            )
            print("measured burst", file=sys.stderr)
            with _measure(profiles.get("burst"), args.burst_jobs):
                figures["burst"] = await burst(
                    engine,
                    tracker,
                    args.burst_jobs,
                    script=SCRIPT,
                    pids=pids,
                    server_pid=server.pid,
                )
            figures["loss"] = await losses(engine, watch, hosts, args)
            for phase, profiling in profiles.items():
                print(profiling.dump(f"{args.profile}.{phase}.pstats", top=30), file=sys.stderr)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await hosts.stop()
        stop_keepers(root)
    return figures


def _measure(profiling: Profiling | None, jobs: int = 1) -> contextlib.AbstractContextManager[None]:
    return profiling.measure(jobs) if profiling is not None else contextlib.nullcontext()


def _cpus(server: ProsodyServer, hosts: Hosts, root: Path) -> dict[str, float]:
    """CPU seconds so far of the engine (this process), Prosody, the agent hosts, the keepers."""
    assert server.pid is not None
    return {
        "engine": time.process_time(),
        "prosody": cpu_of(server.pid),
        "agent_hosts": hosts.cpu(),
        "keepers": sum(cpu_of(pid) for pid in keeper_pids(root)),
    }


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: round(after[key] - before[key], 1) for key in before}


async def idle(
    engine: Engine,
    server: ProsodyServer,
    hosts: Hosts,
    args: argparse.Namespace,
    profiling: Profiling | None,
) -> dict[str, Any]:
    """CPU of the engine, Prosody and the agent hosts while the agents only send heartbeats."""
    print(f"idle for {args.idle_seconds:g} s", file=sys.stderr)
    assert server.pid is not None
    wall, cpu, prosody, agents = (
        time.perf_counter(),
        time.process_time(),
        cpu_of(server.pid),
        hosts.cpu(),
    )
    if profiling is not None:
        with profiling.measure(1):
            await trio.sleep(args.idle_seconds)
    else:
        await trio.sleep(args.idle_seconds)
    wall = time.perf_counter() - wall
    return {
        "idle_s": wall,
        "engine_idle_cpu_percent": 100 * (time.process_time() - cpu) / wall,
        "prosody_idle_cpu_percent": 100 * (cpu_of(server.pid) - prosody) / wall,
        "hosts_idle_cpu_percent": 100 * (hosts.cpu() - agents) / wall,
    }


async def losses(
    engine: Engine, watch: Watch, hosts: Hosts, args: argparse.Namespace
) -> dict[str, Any]:
    """Long jobs everywhere, then SIGKILL of the hosts holding 10% of the agents: seconds
    until they are declared lost, and until their attempts are dispatched again."""
    jobs = [
        await engine.run_rscript("sleep_echo", {"seconds": LONG_SECONDS})
        for _ in range(args.agents)
    ]
    with trio.fail_after(300):
        await watch.until(lambda: all((j, 1, "running") in watch.attempts for j in jobs))
    victims_n = max(1, round(0.1 * len(hosts.processes)))
    victims = {jid for members in hosts.members[:victims_n] for jid in members}
    held = [j for j in jobs if watch.attempts[(j, 1, "dispatched")][1] in victims]
    killed = time.perf_counter()
    for index in range(victims_n):
        hosts.kill(index)
    print(f"killed {len(victims)} agents holding {len(held)} attempts", file=sys.stderr)
    with trio.fail_after(HEARTBEAT_DEADLINE + args.lease + 120):
        await watch.until(
            lambda: (
                all((jid, "lost") in watch.agents for jid in victims)
                and all((j, 2, "dispatched") in watch.attempts for j in held)
            )
        )
    lost_at = [watch.agents[(jid, "lost")] - killed for jid in victims]
    again_at = [watch.attempts[(j, 2, "dispatched")][0] - killed for j in held]
    for job in jobs:
        await engine.kill(job)
    return {
        "killed_agents": len(victims),
        "killed_hosts": victims_n,
        "attempts_held": len(held),
        "lost_first_s": min(lost_at),
        "lost_all_s": max(lost_at),
        "redispatched_first_s": min(again_at) if again_at else None,
        "redispatched_all_s": max(again_at) if again_at else None,
    }


# --- main ---------------------------------------------------------------------------------


async def run(root: Path, args: argparse.Namespace, figures: dict[str, Any]) -> None:
    scripts = root / "scripts"
    scripts.mkdir()
    users = {ENGINE_USER: "engine-pw"}
    users |= {f"agent{n}": "agent-pw" for n in range(1, max(args.agents, 8) + 1)}
    started = time.perf_counter()
    with ProsodyServer(root / "prosody", users=users, upload=False) as server:
        figures["prosody_setup_s"] = time.perf_counter() - started
        print(
            f"prosody with {len(users)} accounts in {figures['prosody_setup_s']:.1f} s",
            file=sys.stderr,
        )
        figures["many"] = await many(server, root, scripts, args)
        if args.rounds:
            figures["throughput"] = await compare(
                server, root, scripts, counts=(2, 8), slots=args.throughput_slots,
                jobs=args.throughput_jobs, rounds=args.rounds,
                profile=f"{args.profile}.throughput" if args.profile else None,
            )  # fmt: skip


def report(figures: dict[str, Any]) -> list[str]:
    print(machine_line(figures))
    m = figures["many"]
    b, loss = m["burst"], m["loss"]
    print(
        f"{figures['agents']} agents, {m['hosts']} processes, {figures['slots']} slots each; heartbeat {m['heartbeat_s']:g} s, deadline {m['heartbeat_deadline_s']:g} s, lease {m['lease_s']:g} s"
    )
    print(
        f"  registered in {m['registered_s']:.1f} s; engine RSS {m['engine_rss_per_agent_kib']:.0f} KiB per agent"
        f" (agent hosts {m['host_rss_per_agent_kib']:.0f} KiB per agent, their {m['keepers']} keepers {m['keeper_rss_per_agent_kib']:.0f} KiB per agent)"
    )
    print(
        f"  idle {m['idle_s']:.0f} s: engine {m['engine_idle_cpu_percent']:.1f}% of a CPU, prosody {m['prosody_idle_cpu_percent']:.1f}%, agent hosts {m['hosts_idle_cpu_percent']:.1f}%"
    )
    print(
        f"  burst of {b['jobs']}: {b['per_s']:.0f} jobs/s, dispatch->result p50 {b['dispatch_p50_ms']:.1f} ms p99 {b['dispatch_p99_ms']:.1f} ms, failed {b['failed']}"
    )
    print(
        f"  killed {loss['killed_agents']} agents ({loss['killed_hosts']} processes) holding {loss['attempts_held']} attempts: lost after {loss['lost_first_s']:.1f}-{loss['lost_all_s']:.1f} s, dispatched again after {loss['redispatched_first_s'] or math.nan:.1f}-{loss['redispatched_all_s'] or math.nan:.1f} s"
    )
    lines = [
        missed(
            "registration of all agents",
            m["registered_s"],
            TARGET_REGISTERED_S,
            higher_is_better=False,
            unit=" s",
        )
        or f"target met: all registered in {m['registered_s']:.1f} s (target {TARGET_REGISTERED_S:g} s)",
        missed(
            "idle engine CPU",
            m["engine_idle_cpu_percent"],
            TARGET_IDLE_CPU_PERCENT,
            higher_is_better=False,
            unit="%",
        )
        or f"target met: idle engine at {m['engine_idle_cpu_percent']:.1f}% of a CPU (target < {TARGET_IDLE_CPU_PERCENT:g}%)",
    ]
    limit = m["heartbeat_deadline_s"] + TARGET_DETECT_MARGIN_S
    lines.append(
        missed("loss detection", loss["lost_all_s"], limit, higher_is_better=False, unit=" s")
        or f"target met: losses detected within {loss['lost_all_s']:.1f} s (target {limit:g} s)"
    )
    if "throughput" in figures:
        t = figures["throughput"]
        print(
            f"XMPP throughput, {t['rounds']} interleaved rounds of {t['jobs']} noop jobs, {t['slots']} slots per agent (medians):"
        )
        for n in ("2", "8"):
            f = t[n]
            print(
                f"  {n} agents: {f['per_s']:.0f} jobs/s {f['per_s_runs']}, p50 {f['dispatch_p50_ms']:.1f} ms, p99 {f['dispatch_p99_ms']:.1f} ms, cpu ms/job engine {f['engine_cpu_ms']:.2f} agents {f['agents_cpu_ms']:.2f} prosody {f['server_cpu_ms']:.2f}"
            )
        lines.append(
            missed(
                "XMPP throughput 8/2 agents",
                100 * t["ratio"],
                100 * TARGET_THROUGHPUT_RATIO,
                higher_is_better=True,
                unit="%",
            )
            or f"target met: 8 agents give {100 * t['ratio']:.0f}% of the jobs/s of 2 (target {100 * TARGET_THROUGHPUT_RATIO:g}%)"
        )
    for line in lines:
        print(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.many_agents", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--agents", type=int, default=1000, help="agents (default 1000)")
    parser.add_argument(
        "--per-process", type=int, default=100, help="agents per process (default 100)"
    )
    parser.add_argument("--slots", type=int, default=2, help="slots per agent (default 2)")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=2.0,
        help="agents' heartbeat, s (default 2, as wfe agent)",
    )
    parser.add_argument("--lease", type=float, default=12.0, help="[agents] lease, s (default 12)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle window (default 30)")
    parser.add_argument(
        "--burst-jobs", type=int, default=0, help="jobs in the measured burst (default 2 per agent)"
    )
    parser.add_argument(
        "--register-timeout",
        type=float,
        default=300.0,
        help="give up waiting after (default 300 s)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="throughput rounds, 0: none (default 3)"
    )
    parser.add_argument(
        "--throughput-jobs", type=int, default=400, help="jobs per throughput burst (default 400)"
    )
    parser.add_argument(
        "--throughput-slots", type=int, default=4, help="slots per agent there (default 4)"
    )
    parser.add_argument(
        "--profile", metavar="PREFIX", help="cProfile the engine; write PREFIX.*.pstats"
    )
    args = parser.parse_args()
    if args.agents < 10 or args.per_process < 1:
        parser.error(
            "--agents must be at least 10 (10% of them are killed) and --per-process at least 1"
        )
    args.burst_jobs = args.burst_jobs or 2 * args.agents
    # Every agent has a keeper (python -P, started from its spool): this checkout must be
    # importable there as it is here.
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # Prosody: a socket per agent
    figures: dict[str, Any] = {**machine(), "agents": args.agents, "per_process": args.per_process,
                               "slots": args.slots, "open_files": hard, "script": SCRIPT}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="wfe-bench-many-") as tmp:
        trio.run(run, Path(tmp), args, figures)
    figures["loadavg_after"] = round(os.getloadavg()[0], 2)
    figures["verdicts"] = report(figures)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
