"""How many actions per second the engine runs, and what 10,000 waiting tasklets cost in memory.

Run from the repository root: ``python -m bench.tasklets [--quick] [--actions N] [--waiting N]``.
Everything goes through a real engine (``open_engine`` on a temporary workspace from
``wfe.engine.cli.demo.make_workspace``, no agents): each action is a recorded job, so it costs the
repository writes of its record (created, running, ended) and a trio task. The benchmark's
own tasklets are written into the workspace as an action folder.

Throughput cases count finished actions per second, wall clock, and process CPU per action;
side by side with the floors under them (bare trio tasks; the same three job writes with no
tasklet). Memory cases start N actions that each wait (``ctx.sleep`` or an event), measure
the resident set growth and, with ``--tracemalloc``, the Python heap by allocation site, then
release or kill them. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bench import _common
from bench._common import Stopwatch, machine, machine_line, missed, percentile, rss_bytes, table
from wfe.engine.runtime.daemon import Engine, open_engine
from wfe.engine.runtime.jobs import NewJob, create_job, set_job_state

TARGET_MB = 100.0  # resident memory for 10,000 waiting tasklets
WAITING_UNIT = 10_000

ACTIONS = {
    "bench.noop/main.py": """
async def main(ctx, params):
    return None
""",
    "bench.chain/main.py": """
__params__ = {"n": int}


async def main(ctx, params):
    for _ in range(params["n"]):
        await ctx.action("bench.noop")
""",
    "bench.fan/main.py": """
import trio

__params__ = {"width": int, "depth": int, "concurrent": bool, "leaf": str, "seconds": float}


async def main(ctx, params):
    width, depth = params["width"], params["depth"]
    if depth == 0:
        return None
    child = "bench.fan" if depth > 1 else params.get("leaf", "bench.noop")
    kwargs = {"width": width, "depth": depth - 1, "concurrent": params["concurrent"]}
    if depth == 1:
        kwargs = {"seconds": params["seconds"]} if child == "bench.sleeper" else {}
    handles = []
    if params["concurrent"]:
        async def start():
            handles.append(await ctx.start_action(child, **kwargs))

        async with trio.open_nursery() as nursery:
            for _ in range(width):
                nursery.start_soon(start)
    else:
        for _ in range(width):
            handles.append(await ctx.start_action(child, **kwargs))
    for handle in handles:
        await handle.join()
""",
    "bench.sleeper/main.py": """
from bench import _common

__params__ = {"seconds": float}


async def main(ctx, params):
    _common.GATE.arrive()
    await ctx.sleep(params["seconds"])
""",
    "bench.waiter/main.py": """
from bench import _common


async def main(ctx, params):
    gate = _common.GATE
    gate.arrive()
    await gate.event.wait()
""",
}


# --- throughput ---------------------------------------------------------------------------


async def roots_sequential(engine: Engine, n: int) -> dict[str, Any]:
    """Start a root action and wait for it, one at a time (the latency of one action)."""
    latencies = []
    for _ in range(n):
        start = trio.current_time()
        job = await engine.run_action("bench.noop", {})
        await wait_root(engine, job)
        latencies.append(trio.current_time() - start)
    return {
        "actions": n,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


async def roots_concurrent(engine: Engine, n: int, clients: int) -> dict[str, Any]:
    """``clients`` callers each starting roots and waiting for them."""
    each = n // clients

    async def client() -> None:
        for _ in range(each):
            await wait_root(engine, await engine.run_action("bench.noop", {}))

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    return {"actions": each * clients}


async def wait_root(engine: Engine, job_id: str) -> None:
    """Wait until a root job's end is committed (``TRACKER``, not ``Engine.wait``: see
    docs/performance.md)."""
    await TRACKER.wait(job_id)


TRACKER = _common.Tracker()


async def one_root(
    engine: Engine, action: str, params: dict[str, Any], count: int
) -> dict[str, Any]:
    """Run one root action that runs ``count`` child actions; count the children."""
    await wait_root(engine, await engine.run_action(action, params))
    return {"actions": count}


async def job_writes_only(engine: Engine, n: int, writers: int) -> dict[str, Any]:
    """The three job records an action costs, written concurrently, with no tasklet (a floor)."""
    each = n // writers

    async def writer() -> None:
        for _ in range(each):
            job = await engine.repo.write(
                create_job(NewJob(kind="action", name="bench.noop", params={}))
            )
            await engine.repo.write(set_job_state(job.id, "running", started=True))
            await engine.repo.write(set_job_state(job.id, "succeeded"))

    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer)
    return {"actions": each * writers}


async def bare_tasks(engine: Engine, n: int) -> dict[str, Any]:
    """Spawn ``n`` trio tasks that return at once (the floor of a task per action)."""

    async def nothing() -> None:
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(nothing)
    return {"actions": n}


Case = Callable[[Engine, int], Awaitable[dict[str, Any]]]


def throughput_cases(n: int) -> list[tuple[str, str, Case]]:
    fan = {"concurrent": False, "leaf": "bench.noop", "seconds": 0.0}
    width3 = round(n ** (1 / 3))
    tree = width3 + width3**2 + width3**3
    return [
        ("bare_trio_tasks", "floor: bare trio tasks, no record", lambda e, n: bare_tasks(e, n)),
        ("job_writes_only", "floor: 3 job writes, 100 writers, no tasklet",
         lambda e, n: job_writes_only(e, n, 100)),
        ("roots_sequential", "root actions, one at a time", lambda e, n: roots_sequential(e, n // 10)),
        ("roots_concurrent_100", "root actions, 100 concurrent callers",
         lambda e, n: roots_concurrent(e, n, 100)),
        ("children_sequential", "ctx.action() one child after another",
         lambda e, n: one_root(e, "bench.chain", {"n": n // 2}, n // 2)),
        ("fanout_sequential_starts", f"fan-out: {n} children, started one by one",
         lambda e, n: one_root(e, "bench.fan", {**fan, "width": n, "depth": 1}, n)),
        ("fanout_concurrent_starts", f"fan-out: {n} children, started concurrently",
         lambda e, n: one_root(e, "bench.fan", {**fan, "width": n, "depth": 1, "concurrent": True}, n)),
        ("fanout_tree", f"fan-out tree {width3}x{width3}x{width3} ({tree} actions), concurrent",
         lambda e, n: one_root(e, "bench.fan", {**fan, "width": width3, "depth": 3, "concurrent": True}, tree)),
    ]  # fmt: skip


async def run_throughput(engine: Engine, n: int) -> list[dict[str, Any]]:
    await one_root(engine, "bench.fan", {"width": 50, "depth": 1, "concurrent": True, "leaf": "bench.noop",
                                         "seconds": 0.0}, 50)  # fmt: skip  # warm up
    rows = []
    for key, label, case in throughput_cases(n):
        await engine.repo.flush()
        first = engine.repo.statistics()
        with Stopwatch() as sw:
            figures = await case(engine, n)
            await engine.repo.flush()
        stats = engine.repo.statistics()
        commits = stats.commits - first.commits
        done = figures.pop("actions")
        rows.append({
            "case": key,
            "label": label,
            "actions": done,
            "per_s": done / sw.wall,
            "cpu_us": sw.cpu / done * 1e6,
            "ops_per_commit": (stats.ops - first.ops) / commits if commits else None,
            **figures,
        })  # fmt: skip
    return rows


# --- memory -------------------------------------------------------------------------------


def settle() -> int:
    gc.collect()
    return rss_bytes()


async def hold_children(
    engine: Engine, host: trio.Nursery, n: int, leaf: str
) -> Callable[[], Awaitable[None]]:
    """One root whose ``n`` children wait in ``leaf``; returns how to end them."""
    params = {"width": n, "depth": 1, "concurrent": True, "leaf": leaf, "seconds": 86_400.0}
    root = await engine.run_action("bench.fan", params)

    async def end() -> None:
        if leaf == "bench.waiter":
            _common.GATE.event.set()
        else:
            await engine.kill(root)
        await wait_root(engine, root)
        await engine.repo.flush()

    return end


async def hold_roots(
    engine: Engine, host: trio.Nursery, n: int, leaf: str
) -> Callable[[], Awaitable[None]]:
    """``n`` root actions that wait in ``leaf``."""

    roots: list[str] = []

    async def start() -> None:
        params = {"seconds": 86_400.0} if leaf == "bench.sleeper" else {}
        roots.append(await engine.run_action(leaf, params))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(start)

    async def end() -> None:
        _common.GATE.event.set()
        for root in roots:
            await wait_root(engine, root)
        await engine.repo.flush()

    return end


async def bare_sleepers(
    engine: Engine, host: trio.Nursery, n: int, leaf: str
) -> Callable[[], Awaitable[None]]:
    """``n`` bare trio tasks in ``trio.sleep`` (the floor: no job, no tasklet)."""
    scope = trio.CancelScope()
    done = trio.Event()

    async def sleeper() -> None:
        _common.GATE.arrive()
        await trio.sleep(86_400)

    async def run_host() -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(sleeper)
        done.set()

    host.start_soon(run_host)

    async def end() -> None:
        scope.cancel()
        await done.wait()

    return end


Holder = Callable[[Engine, trio.Nursery, int, str], Awaitable[Callable[[], Awaitable[None]]]]
MEMORY_CASES: list[tuple[str, str, Holder, str]] = [
    ("bare_trio_sleep", "floor: bare trio tasks in trio.sleep", bare_sleepers, ""),
    (
        "children_ctx_sleep",
        "child actions awaiting ctx.sleep (then killed)",
        hold_children,
        "bench.sleeper",
    ),
    ("children_event", "child actions awaiting an event (then set)", hold_children, "bench.waiter"),
    ("roots_event", "root actions awaiting an event (then set)", hold_roots, "bench.waiter"),
]


async def measure_memory(
    engine: Engine, host: trio.Nursery, n: int, holder: Holder, leaf: str, trace: bool
) -> dict[str, Any]:
    gate = _common.new_gate(n)
    await engine.repo.flush()
    if trace:
        tracemalloc.start(1)
    before = settle()
    snapshot = tracemalloc.take_snapshot() if trace else None
    with Stopwatch() as start_sw:
        end = await holder(engine, host, n, leaf)
        await gate.all_arrived.wait()
        await engine.repo.flush()
    after = settle()
    figures: dict[str, Any] = {
        "waiting": n,
        "start_s": start_sw.wall,
        "rss_growth_mb": (after - before) / 2**20,
        "per_tasklet_kb": (after - before) / n / 1024,
        "per_10k_mb": (after - before) / n * WAITING_UNIT / 2**20,
    }
    if trace:
        assert snapshot is not None
        later = tracemalloc.take_snapshot()
        stats = later.compare_to(snapshot, "lineno")
        total = sum(s.size_diff for s in stats)
        figures["traced_mb"] = total / 2**20
        figures["traced_per_tasklet_b"] = total / n
        figures["top_sites"] = [
            {"site": _site(s.traceback), "kb": s.size_diff / 1024, "per_tasklet_b": s.size_diff / n}
            for s in stats[:12]
        ]
        tracemalloc.stop()
    with Stopwatch() as end_sw:
        await end()
    figures["end_s"] = end_sw.wall
    return figures


def _site(traceback: tracemalloc.Traceback) -> str:
    frame = traceback[0]
    path = frame.filename
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{frame.lineno}"


# --- main ---------------------------------------------------------------------------------


async def run_throughput_engine(root: Path, n: int) -> list[dict[str, Any]]:
    actions = _common.write_actions(root / "actions", ACTIONS)
    config = _common.workspace(root / "throughput", agents=0, actions=actions)
    async with open_engine(config) as engine, trio.open_nursery() as nursery:
        await nursery.start(TRACKER.run, engine.repo)
        rows = await run_throughput(engine, n)
        nursery.cancel_scope.cancel()
    return rows


async def run_memory_case(root: Path, key: str, n: int, trace: bool) -> dict[str, Any]:
    """One memory case, in a process of its own (so that no earlier case's freed memory is
    reused and hides the growth)."""
    _label, holder, leaf = {k: (label, h, leaf) for k, label, h, leaf in MEMORY_CASES}[key]
    actions = _common.write_actions(root / "actions", ACTIONS)
    config = _common.workspace(root / key, agents=0, actions=actions)
    global TRACKER
    TRACKER = _common.Tracker(times=False)  # the bench's own bookkeeping stays out of the figures
    async with open_engine(config) as engine, trio.open_nursery() as nursery:
        await nursery.start(TRACKER.run, engine.repo)
        # warm up: every code path once, so that imports and caches are not counted
        gate = _common.new_gate(100)
        end = await holder(engine, nursery, 100, leaf or "bench.sleeper")
        await gate.all_arrived.wait()
        await end()
        figures = await measure_memory(engine, nursery, n, holder, leaf, trace=False)
        if trace and key != "bare_trio_sleep":
            traced = await measure_memory(engine, nursery, n, holder, leaf, trace=True)
            figures.update({k: v for k, v in traced.items() if k.startswith(("traced", "top"))})
        nursery.cancel_scope.cancel()
    return figures


def memory_in_subprocess(key: str, n: int, trace: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.tasklets", "--memory-case", key, "--waiting", str(n)]
    if trace:
        command.append("--tracemalloc")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"memory case {key} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(figures: dict[str, Any]) -> None:
    print(machine_line(figures))
    print()
    print("Actions per second (each action is a recorded job: created, running, ended)")
    print(table(figures["throughput"], [
        ("label", "case", ""), ("actions", "actions", ","), ("per_s", "actions/s", ",.0f"),
        ("cpu_us", "cpu us/action", ",.0f"), ("ops_per_commit", "writes/commit", ",.1f"),
        ("p50_ms", "p50 ms", ".2f"), ("p99_ms", "p99 ms", ".2f"),
    ]))  # fmt: skip
    print()
    labels = {key: label for key, label, _, _ in MEMORY_CASES}
    rows = [{"label": labels[k], **v} for k, v in figures["memory"].items()]
    print(
        f"Memory of {figures['waiting']:,} waiting tasklets (resident set growth; traced = Python heap)"
    )
    print(table(rows, [
        ("label", "case", ""), ("start_s", "start s", ".2f"), ("rss_growth_mb", "RSS MB", ",.1f"),
        ("per_tasklet_kb", "KB each", ",.2f"), ("per_10k_mb", "MB per 10k", ",.1f"),
        ("traced_mb", "traced MB", ",.1f"), ("end_s", "end s", ".2f"),
    ]))  # fmt: skip
    traced = figures["memory"].get("children_ctx_sleep", {}).get("top_sites")
    if traced:
        print()
        print("Where a waiting child action's memory goes (tracemalloc, top sites)")
        print(
            table(
                traced, [("site", "allocation site", ""), ("per_tasklet_b", "bytes each", ",.0f")]
            )
        )
    print()
    for key, value in figures["memory"].items():
        if key == "bare_trio_sleep":
            continue
        line = missed(f"{key}: 10,000 waiting tasklets", value["per_10k_mb"], TARGET_MB,
                      higher_is_better=False, unit=" MB")  # fmt: skip
        print(
            line
            or f"target met: {key}: {value['per_10k_mb']:.1f} MB per 10,000 waiting (limit {TARGET_MB:g} MB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tasklets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a tenth of the work, for a smoke run")
    parser.add_argument(
        "--actions", type=int, default=2000, help="actions per throughput case (default 2000)"
    )
    parser.add_argument(
        "--waiting", type=int, default=WAITING_UNIT, help="waiting tasklets per memory case"
    )
    parser.add_argument(
        "--tracemalloc", action="store_true", help="also trace the Python heap by allocation site"
    )
    parser.add_argument(
        "--memory-case", choices=[k for k, _, _, _ in MEMORY_CASES], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.quick:
        args.actions, args.waiting = args.actions // 10, args.waiting // 10
    if args.memory_case:
        with tempfile.TemporaryDirectory(prefix="wfe-bench-") as tmp:
            case = trio.run(
                run_memory_case, Path(tmp), args.memory_case, args.waiting, args.tracemalloc
            )
        print(json.dumps(case, default=str))
        return
    figures: dict[str, Any] = {**machine(), "actions": args.actions, "waiting": args.waiting,
                               "target_mb_per_10k": TARGET_MB}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="wfe-bench-") as tmp:
        figures["throughput"] = trio.run(run_throughput_engine, Path(tmp), args.actions)
    figures["memory"] = {
        key: memory_in_subprocess(key, args.waiting, args.tracemalloc)
        for key, _, _, _ in MEMORY_CASES
    }
    figures["loadavg_after"] = round(os.getloadavg()[0], 2)
    report(figures)
    worst = max(v["per_10k_mb"] for k, v in figures["memory"].items() if k != "bare_trio_sleep")
    figures["worst_mb_per_10k"] = worst
    figures["memory_target_met"] = worst <= TARGET_MB
    print(json.dumps(figures, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
