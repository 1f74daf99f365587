"""Output flood: N concurrent ``bigoutput`` jobs of S MB each through local agents.

What an agent that floods output costs the engine: every output chunk (at most 64 KiB) an
agent sends becomes one queued repository write. If the writer commits slower than agents
send, the queue (and the engine's memory) grows unless the engine stops reading from agents.

Per configuration, one fresh engine process (``bench._common.workspace``) with two local agents and
enough slots for every job at once. A sampler thread reads, every 2 ms, the repository's
``queue_depth`` and the engine process's resident memory (``VmRSS``) and keeps the maxima
(``VmHWM``, the kernel's peak, is shown too: it includes start-up and the output check).
Reported: the largest queue, the peak RSS and how far it rose above the idle engine, the MB/s
of output committed (first submit to last committed end), the engine's CPU per MB, and a
check that every job's stored output has the sha256 of what the script wrote.

On this 2-core machine the agents (spool, framing) are slower than the writer, so the queue
stays short. ``--disk-mb-s R`` simulates a repository on a slower disk: every batch the writer
commits also sleeps, on the writer's worker thread, as long as writing its output bytes at R
MB/s would take (and every batch goes to that thread, as when commits fsync). That is the case
the backpressure is for: agents that produce output faster than the repository stores it.

    flock /tmp/bench.lock python -m bench.output_flood --configs 4x50,8x50
    flock /tmp/bench.lock python -m bench.output_flood --configs 4x50,8x50 --disk-mb-s 10
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

from bench._common import (
    Stopwatch,
    Tracker,
    cpu_seconds,
    machine,
    machine_line,
    rss_bytes,
    spool_agent_pids,
    table,
    wait_for_agents,
    workspace,
)
from wfe.engine.repository import attempts as attempts_module
from wfe.engine.repository import open_repository
from wfe.engine.repository import writer as writer_module
from wfe.engine.runtime import daemon as daemon_module
from wfe.engine.runtime.daemon import Engine, open_engine

MB = 1024 * 1024
AGENTS = 2
SCRIPT = Path(__file__).resolve().parent.parent / "rscripts" / "scripts" / "bigoutput.py"


def simulate_slow_disk(mb_per_s: float) -> None:
    """Make every commit also take as long as writing its output bytes at ``mb_per_s``."""
    stored = attempts_module.output_stored
    apply = writer_module.Writer._apply

    def output_stored(chunk: Any) -> Any:
        op = stored(chunk)
        op.nbytes = len(chunk.data)  # type: ignore[attr-defined]
        return op

    def slow_apply(self: Any, batch: list[Any]) -> Any:
        nbytes = sum(getattr(command.op, "nbytes", 0) for command in batch)
        time.sleep(nbytes / (mb_per_s * MB))  # on the writer's worker thread: a slow disk
        return apply(self, batch)

    attempts_module.output_stored = output_stored
    writer_module.Writer._apply = slow_apply  # type: ignore[method-assign]
    daemon_module.open_repository = functools.partial(open_repository, inline_max=0)  # type: ignore[attr-defined]


def expected_sha256(size: int, line_length: int = 100) -> str:
    """The sha256 of what ``bigoutput`` writes for ``size`` bytes (its own line generator)."""
    spec = importlib.util.spec_from_file_location("_bigoutput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    digest = hashlib.sha256()
    left = size
    for line in module.lines(line_length):
        if left <= 0:
            break
        digest.update(line[:left])
        left -= len(line)
    return digest.hexdigest()


def vm_hwm() -> int:
    """Peak resident set size of this process so far (``VmHWM``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


class Sampler:
    """A thread that keeps the maximum queue depth and RSS until stopped."""

    def __init__(self, engine: Engine, interval: float = 0.002) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self.max_queue = 0
        self.max_rss = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            depth = self._engine.repo.statistics().queue_depth
            self.max_queue = max(self.max_queue, depth)
            self.max_rss = max(self.max_rss, rss_bytes())
            self.samples += 1


async def run_config(root: Path, jobs: int, size_mb: int, digest: str) -> dict[str, Any]:
    slots = -(-jobs // AGENTS)
    config = workspace(root / f"ws-{jobs}x{size_mb}", agents=AGENTS, slots=slots)
    tracker = Tracker(times=False)
    size = size_mb * MB
    figures: dict[str, Any] = {"jobs": jobs, "size_mb": size_mb}
    async with open_engine(config) as engine, trio.open_nursery() as nursery:
        await nursery.start(tracker.run, engine.repo)
        await wait_for_agents(engine, AGENTS)
        pids = spool_agent_pids(engine)
        figures["idle_rss_mb"] = rss_bytes() / MB
        agents_cpu = sum(cpu_seconds(p) for p in pids)
        ops_before = engine.repo.statistics().ops
        with Sampler(engine) as sampler, Stopwatch() as sw:
            ids = [await engine.run_rscript("bigoutput", {"size": size}) for _ in range(jobs)]
            states = [await tracker.wait(job) for job in ids]
        agents_cpu = sum(cpu_seconds(p) for p in pids) - agents_cpu
        stats = engine.repo.statistics()
        good = 0
        for job in ids:
            data = await engine.output(job)
            good += len(data) == size and hashlib.sha256(data).hexdigest() == digest
            del data
        figures.update(
            failed=sum(state != "succeeded" for state in states),
            output_ok=f"{good}/{jobs}",
            max_queue=sampler.max_queue,
            peak_rss_mb=sampler.max_rss / MB,
            rss_rise_mb=(sampler.max_rss / MB) - figures["idle_rss_mb"],
            mb_per_s=jobs * size_mb / sw.wall,
            wall_s=sw.wall,
            engine_cpu_ms_per_mb=sw.cpu / (jobs * size_mb) * 1e3,
            agents_cpu_ms_per_mb=agents_cpu / (jobs * size_mb) * 1e3,
            ops=stats.ops - ops_before,
            max_batch=stats.max_ops_per_commit,
            samples=sampler.samples,
        )
        nursery.cancel_scope.cancel()
    return figures


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for item in text.split(","):
        jobs, _, size = item.strip().partition("x")
        if not (jobs.isdigit() and size.isdigit()) or int(jobs) < 1 or int(size) < 1:
            raise SystemExit(f"--configs: {item!r} is not JOBSxMB, e.g. 4x50")
        configs.append((int(jobs), int(size)))
    return configs


async def run(root: Path, configs: list[tuple[int, int]], figures: dict[str, Any]) -> None:
    digests: dict[int, str] = {}
    figures["configs"] = []
    for jobs, size_mb in configs:
        if size_mb not in digests:
            digests[size_mb] = await trio.to_thread.run_sync(expected_sha256, size_mb * MB)
        figures["configs"].append(await run_config(root, jobs, size_mb, digests[size_mb]))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.output_flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--configs", type=parse_configs, default=parse_configs("4x50,8x50"),
                        help="jobs x MB each to run (default 4x50,8x50)")  # fmt: skip
    parser.add_argument("--disk-mb-s", type=float, default=None,
                        help="simulate a repository disk that stores this many MB/s (see above)")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.disk_mb_s is not None:
        simulate_slow_disk(args.disk_mb_s)
    if args.child:  # one configuration in this process; its figures as JSON on the last line
        with tempfile.TemporaryDirectory(prefix="wfe-bench-") as tmp:
            child: dict[str, Any] = {"configs": []}
            trio.run(run, Path(tmp), args.configs, child)
        print(json.dumps({**child["configs"][0], "vm_hwm_mb": vm_hwm() / MB}))
        return
    figures: dict[str, Any] = {**machine(), "disk_mb_s": args.disk_mb_s, "configs": []}
    for jobs, size_mb in args.configs:  # each in a fresh process: RSS of one engine at a time
        command = [
            sys.executable,
            "-m",
            "bench.output_flood",
            "--child",
            "--configs",
            f"{jobs}x{size_mb}",
        ]
        if args.disk_mb_s is not None:
            command += ["--disk-mb-s", str(args.disk_mb_s)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        figures["configs"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    figures["loadavg_after"] = round(os.getloadavg()[0], 2)
    print(machine_line(figures))
    disk = f"; simulated disk {args.disk_mb_s:g} MB/s" if args.disk_mb_s else ""
    print(f"{AGENTS} local agents, slots for every job at once; sampled every 2 ms{disk}")
    print()
    rows = [{**f, "config": f"{f['jobs']} x {f['size_mb']} MB"} for f in figures["configs"]]
    print(table(rows, [
        ("config", "jobs x size", ""), ("max_queue", "max queue (ops)", ","),
        ("idle_rss_mb", "idle RSS MB", ".0f"), ("peak_rss_mb", "peak RSS MB", ".0f"),
        ("rss_rise_mb", "RSS rise MB", ".0f"), ("mb_per_s", "MB/s committed", ".1f"),
        ("engine_cpu_ms_per_mb", "engine cpu ms/MB", ".1f"),
        ("agents_cpu_ms_per_mb", "agents cpu ms/MB", ".1f"), ("max_batch", "max ops/commit", ","),
        ("vm_hwm_mb", "VmHWM MB", ".0f"), ("output_ok", "sha256 ok", ""), ("failed", "failed", ""),
    ]))  # fmt: skip
    print(json.dumps(figures, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
