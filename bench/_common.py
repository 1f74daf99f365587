"""Helpers shared by the engine benchmarks: the machine, memory and CPU readings, tables.

Benchmarks measure real time, so they read ``time.perf_counter`` and ``/proc`` directly;
none of this is engine logic.
"""

from __future__ import annotations

import cProfile
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from wfe.engine.cli.demo import make_workspace
from wfe.engine.config import Config

if TYPE_CHECKING:
    from wfe.engine.runtime.daemon import Engine

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "loadavg_before": round(os.getloadavg()[0], 2),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(figures: dict[str, Any]) -> str:
    return (
        f"{figures['nproc']} cpus ({figures['cpu']}), python {figures['python']},"
        f" load average {figures['loadavg_before']} -> {figures.get('loadavg_after', '?')}"
    )


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / _CLOCK_TICKS


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def workspace(
    directory: Path, *, agents: int, slots: int = 2, actions: Path | None = None
) -> Config:
    """A fresh engine workspace (``wfe.engine.cli.demo.make_workspace``), optionally with extra actions."""
    config = make_workspace(directory, agents=agents, slots=slots)
    if actions is not None:
        config = attrs.evolve(config, engine=attrs.evolve(config.engine, actions=(str(actions),)))
    return config


def write_actions(root: Path, sources: dict[str, str]) -> Path:
    """Write tasklet files: ``{"domain.action/file.py": source}`` under ``root``."""
    for name, source in sources.items():
        action, file = name.split("/")
        domain, verb = action.split(".")
        folder = root / domain / verb
        folder.mkdir(parents=True, exist_ok=True)
        (folder / file).write_text(source)
    return root


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Format ``rows`` as a text table; ``columns`` are (key, heading, format spec)."""
    cells = [[heading for _, heading, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                line.append("-")
            else:
                line.append(format(value, spec) if spec else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for n, line in enumerate(cells):
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(parts))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def missed(
    what: str, value: float, target: float, *, higher_is_better: bool, unit: str = ""
) -> str | None:
    """A line saying by how much ``value`` misses ``target``, or None when it meets it."""
    if higher_is_better and value >= target:
        return None
    if not higher_is_better and value <= target:
        return None
    if higher_is_better:
        return f"target missed: {what} {value:,.1f}{unit} is {100 * (1 - value / target):.0f}% below {target:,}{unit}"
    return f"target missed: {what} {value:,.1f}{unit} is {value / target:.1f}x the limit of {target:,}{unit}"


class Stopwatch:
    """Wall and process-CPU time of a block: ``with Stopwatch() as sw: ...; sw.wall, sw.cpu``."""

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


class Profiling:
    """cProfile of the trio thread over the measured blocks, and the CPU of every thread.

    With ``cpu=True`` functions are timed by the thread's CPU time, else by wall time.

    ``with profiling.measure(jobs): ...`` adds a block (a burst of ``jobs``); ``dump(path)``
    writes the pstats file and returns a summary: the top functions by own time and the CPU
    each thread of this process spent inside the blocks (the repository's worker threads are
    not in the profile: cProfile sees only the thread that enabled it).
    """

    def __init__(self, *, cpu: bool = True) -> None:
        # cpu: time functions by the thread's CPU time (where the CPU goes); else by wall time
        # (where the waiting goes, preemption by the agents included)
        self.profile = cProfile.Profile(time.thread_time if cpu else time.perf_counter)
        self.jobs = 0
        self.threads: dict[str, float] = {}

    def measure(self, jobs: int) -> _Measured:
        self.jobs += jobs
        return _Measured(self)

    def dump(self, path: str, top: int = 40) -> str:
        import io
        import pstats

        self.profile.dump_stats(path)
        out = io.StringIO()
        stats = pstats.Stats(self.profile, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        lines = [f"profile of {self.jobs} jobs written to {path}; thread cpu ms/job:"]
        for name, seconds in sorted(self.threads.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<30} {seconds / max(self.jobs, 1) * 1e3:.3f}")
        return "\n".join(lines) + "\n" + out.getvalue()


def thread_cpu() -> dict[str, float]:
    """CPU seconds of every live thread of this process, by ``name:tid``."""
    result = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        result[f"{comm}:{task.name}"] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return result


class _Measured:
    def __init__(self, profiling: Profiling) -> None:
        self._p = profiling

    def __enter__(self) -> None:
        self._before = thread_cpu()
        self._p.profile.enable()

    def __exit__(self, *exc: object) -> None:
        self._p.profile.disable()
        for name, seconds in thread_cpu().items():
            spent = seconds - self._before.get(name, 0.0)
            key = "main (trio)" if name.endswith(f":{os.getpid()}") else name.split(":")[0]
            self._p.threads[key] = self._p.threads.get(key, 0.0) + spent


class Gate:
    """Where benchmark tasklets check in before they wait, and the event they may wait for."""

    def __init__(self, expected: int = 0) -> None:
        self.arrived = 0
        self.expected = expected
        self.all_arrived = trio.Event()  # set when ``expected`` tasklets have arrived
        self.event = trio.Event()  # what the waiting tasklets wait for

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_arrived.set()


#: The current gate; tasklet files read ``bench._common.GATE`` when they run.
GATE = Gate()


def new_gate(expected: int = 0) -> Gate:
    """Replace the gate with one that expects ``expected`` arrivals, and return it."""
    global GATE
    GATE = Gate(expected)
    return GATE


TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class Tracker:
    """Learns from the committed event stream when jobs and attempts change state.

    ``times[(subject, kind, state)]`` is the ``perf_counter`` time the first such event was
    delivered to this subscriber (just after its commit). ``wait(job_id)`` returns once the
    job's end is committed. It replaces ``Engine.wait`` in the benchmarks because that can
    miss the end of a root job (see docs/performance.md).
    """

    def __init__(self, *, times: bool = True) -> None:
        self.keep_times = times  # False: remember only job ends (memory benchmarks)
        self.times: dict[tuple[str, str, str | None], float] = {}
        self.ended: dict[str, str] = {}
        self._waiters: dict[str, trio.Event] = {}

    async def run(
        self, repo: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from wfe.engine.repository import Missed

        async with repo.subscribe(max_buffer=10_000_000) as subscription:
            task_status.started()
            async for first in subscription:
                now = time.perf_counter()
                item = first
                while item is not None:
                    if isinstance(item, Missed):
                        raise RuntimeError(f"tracker missed events {item.first_id}..{item.last_id}")
                    self._note(item, now)
                    item = subscription.receive_nowait()

    def _note(self, event: Any, now: float) -> None:
        state = event.data.get("state")
        if self.keep_times:
            self.times.setdefault((event.subject, event.kind, state), now)
        if event.kind == "job.state" and state in TERMINAL:
            self.ended[event.subject] = state
            waiter = self._waiters.pop(event.subject, None)
            if waiter is not None:
                waiter.set()

    async def wait(self, job_id: str) -> str:
        """Return the job's final state once it is committed (and forget it)."""
        while job_id not in self.ended:
            await self._waiters.setdefault(job_id, trio.Event()).wait()
        return self.ended.pop(job_id)

    def at(self, subject: str, kind: str, state: str | None) -> float | None:
        return self.times.get((subject, kind, state))


# --- dispatch measurements shared by bench.local_dispatch and bench.xmpp_dispatch --------------


async def submit(engine: Any, script: str, submitted: dict[str, float]) -> str:
    """Queue one ``script`` job; note when it was submitted."""
    start = time.perf_counter()
    job: str = await engine.run_rscript(script, {})
    submitted[job] = start
    return job


async def burst(
    engine: Any,
    tracker: Tracker,
    n: int,
    *,
    script: str,
    pids: Sequence[int],
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Submit ``n`` jobs at once (from 50 concurrent callers) and wait for every result.

    CPU per job is reported for the engine (this process), the agents (``pids``) and, when
    given, a server process (``server_pid``, e.g. Prosody) as ``server_cpu_ms``.
    """
    submitted: dict[str, float] = {}
    agents_cpu = sum(cpu_seconds(p) for p in pids)
    server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
    callers = min(50, n)

    async def caller(k: int) -> None:
        for _ in range(k):
            job = await submit(engine, script, submitted)
            nursery.start_soon(tracker.wait, job)

    with Stopwatch() as sw:
        async with trio.open_nursery() as nursery:
            for c in range(callers):
                nursery.start_soon(caller, n // callers + (1 if c < n % callers else 0))
    agents_cpu = sum(cpu_seconds(p) for p in pids) - agents_cpu
    figures = latencies(tracker, submitted)
    first = min(submitted.values())
    last = max(tracker.at(j, "job.state", "succeeded") or 0.0 for j in submitted)
    figures.update(
        jobs=len(submitted),
        per_s=len(submitted) / (last - first),
        engine_cpu_ms=sw.cpu / len(submitted) * 1e3,
        agents_cpu_ms=agents_cpu / len(submitted) * 1e3,
        cpu_busy=(sw.cpu + agents_cpu) / sw.wall / (os.cpu_count() or 1),
        server_cpu_ms=(cpu_seconds(server_pid) - server_cpu) / len(submitted) * 1e3
        if server_pid
        else None,
    )
    return figures


def latencies(tracker: Tracker, submitted: dict[str, float]) -> dict[str, Any]:
    """Percentiles of submit->committed and dispatch->committed, and the stages between."""
    total, dispatch_to_result, queued, to_running, run_to_commit = [], [], [], [], []
    failed = 0
    for job, start in submitted.items():
        done = tracker.at(job, "job.state", "succeeded")
        dispatched = tracker.at(job, "attempt.state", "dispatched")
        running = tracker.at(job, "attempt.state", "running")
        if done is None or dispatched is None:
            failed += 1
            continue
        total.append(done - start)
        dispatch_to_result.append(done - dispatched)
        queued.append(dispatched - start)
        if running is not None:
            to_running.append(running - dispatched)
            run_to_commit.append(done - running)

    def ms(values: list[float], p: float) -> float:
        return percentile(values, p) * 1e3

    return {
        "failed": failed,
        "p50_ms": ms(total, 50),
        "p99_ms": ms(total, 99),
        "dispatch_p50_ms": ms(dispatch_to_result, 50),
        "dispatch_p99_ms": ms(dispatch_to_result, 99),
        "stage_queued_p50_ms": ms(queued, 50),
        "stage_accepted_p50_ms": ms(to_running, 50),
        "stage_run_to_commit_p50_ms": ms(run_to_commit, 50),
    }


def spool_agent_pids(engine: Engine) -> list[int]:
    """The pids of the engine's local agents, from the lock files of their spools."""
    pids = []
    for lock in sorted(engine.config.agents_dir.glob("*/spool/agent.lock")):
        text = lock.read_text().strip()
        if text.isdigit():
            pids.append(int(text))
    return pids


async def wait_for_agents(engine: Engine, count: int) -> None:
    """Until ``count`` agents are connected (checked after every committed event; 30 s at most)."""
    with trio.fail_after(30):
        async with engine.repo.subscribe() as events:
            while sum(1 for a in engine.agents() if a["state"] == "connected") < count:
                await events.__anext__()
