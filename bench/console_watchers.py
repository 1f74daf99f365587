"""Does a crowd of console watchers slow dispatch? Jobs/s with 0 and with N watchers.

Run from the repository root: ``python -m bench.console_watchers [--jobs N] [--watchers N,N]
[--stalled FRACTION] [--quick]``. One engine with two local agents (4 slots each) serves its
console on loopback. For each case a child process opens that many console connections; each
authenticates and subscribes to every event; a fraction of them (``--stalled``, default a
quarter) then never read a byte again, the rest read and discard. With every watcher
subscribed, a burst of ``noop`` RScript jobs is submitted at once (50 callers) and the
benchmark waits for every committed end; jobs/s is from the first submit to the last end.
Cases run in the order 0, N, ..., 0, so a drift in the machine's load shows as a gap between
the two 0 rows. The watchers run in their own process, so what is measured is the engine's
cost of serving them, not theirs of reading. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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
    table,
    wait_for_agents,
    workspace,
)
from wfe.engine.console.api import load_ops
from wfe.engine.console.server import ConsoleServer
from wfe.engine.console.session import Limits
from wfe.engine.keys import read_token
from wfe.engine.runtime.daemon import Engine, open_engine
from wfe.protocols.console_frames import decode_binary

SCRIPT = "noop"
CALLERS = 50


# --- the watchers (child process) ----------------------------------------------------------


async def watchers(url: str, token: str, count: int, stalled: int, compress: bool) -> None:
    """Open ``count`` subscribed connections (``stalled`` of them never read; ``compress``:
    binary zlib frames); print ``ready`` once all are subscribed; run until stdin closes."""
    from trio_websocket import ConnectionClosed, wrap_client_stream

    host, port = url.split("//")[1].strip("/").split(":")
    ready = trio.Event()
    subscribed = 0
    received = [0]
    latencies: list[float] = []

    async def one(k: int, nursery: trio.Nursery) -> None:
        nonlocal subscribed
        stream = await trio.open_tcp_stream(host, int(port))
        ws = await wrap_client_stream(nursery, stream, f"{host}:{port}", "/", message_queue_size=1)
        await ws.send_message(json.dumps({"id": 1, "op": "auth", "args": {"token": token}}))
        await ws.get_message()
        await ws.send_message(
            json.dumps({"id": 2, "op": "subscribe", "args": {"compress": compress}})
        )
        await ws.get_message()
        subscribed += 1
        if subscribed == count:
            ready.set()
        if k < stalled:
            await trio.sleep_forever()  # never read again: the socket fills up
        try:
            while True:
                message = await ws.get_message()
                received[0] += len(message)
                if k == stalled:  # one reader measures commit -> arrival of every event
                    arrived = time.time()  # wall-clock, as the events' `at`
                    frame = (
                        decode_binary(message)
                        if isinstance(message, bytes)
                        else json.loads(message)
                    )
                    latencies.extend(arrived - e["at"] for e in frame.get("events", ()))
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        for k in range(count):
            nursery.start_soon(one, k, nursery)
        await ready.wait()
        print("ready", flush=True)
        await trio.wrap_file(sys.stdin).read()  # until the parent closes our stdin
        latencies.sort()
        report = {"bytes_received": received[0], "latency_ms": {}}
        if latencies:
            report["latency_ms"] = {
                name: round(latencies[int(q * (len(latencies) - 1))] * 1e3, 1)
                for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            }
        print(json.dumps(report), flush=True)
        nursery.cancel_scope.cancel()


# --- the engine side -----------------------------------------------------------------------


async def burst(engine: Engine, tracker: Tracker, n: int) -> dict[str, Any]:
    """Submit ``n`` noop jobs at once from CALLERS callers; wait for every committed end."""
    ends: list[str] = []
    first = time.perf_counter()

    async def caller(count: int, nursery: trio.Nursery) -> None:
        for _ in range(count):
            job = await engine.run_rscript(SCRIPT, {})
            nursery.start_soon(lambda j=job: _end(tracker, j, ends))

    with Stopwatch() as sw:
        async with trio.open_nursery() as nursery:
            for c in range(CALLERS):
                nursery.start_soon(caller, n // CALLERS + (1 if c < n % CALLERS else 0), nursery)
    wall = time.perf_counter() - first
    return {
        "jobs": n,
        "jobs_per_s": n / wall,
        "failed": sum(1 for s in ends if s != "succeeded"),
        "engine_cpu_ms_per_job": sw.cpu / n * 1e3,
    }


async def _end(tracker: Tracker, job: str, ends: list[str]) -> None:
    ends.append(await tracker.wait(job))


CONSOLE_CPU = {"publish": 0.0, "tick": 0.0}  # CPU seconds of the trio thread in the hub's work


def measure_console(server: ConsoleServer) -> None:
    """Count the trio thread's CPU time in the hub's two synchronous parts: ``publish`` (each
    committed batch, encoded once and joined per filter) and ``tick`` (a frame per group,
    handed to every stream: written at once, or queued for its writer)."""
    hub = server.hub
    for part in ("publish", "tick"):
        inner = getattr(hub, part)

        def timed(*args: Any, _inner: Any = inner, _part: str = part) -> Any:
            start = time.thread_time()
            try:
                return _inner(*args)
            finally:
                CONSOLE_CPU[_part] += time.thread_time() - start

        setattr(hub, part, timed)


async def run_case(
    engine: Engine,
    server: ConsoleServer,
    tracker: Tracker,
    url: str,
    token: str,
    count: int,
    stalled: int,
    jobs: int,
    frames: str,
    idle: bool = False,
) -> dict[str, Any]:
    child = None
    if count:
        child = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "bench.console_watchers",
                "--child",
                url,
                token,
                str(count),
                str(stalled),
                frames,
                "idle" if idle else "normal",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        line = b""
        with trio.fail_after(120):
            while not line.endswith(b"\n"):
                line += await child.stdout.receive_some(1)
        assert line.strip() == b"ready", line
    before = server.statistics()
    console_cpu = CONSOLE_CPU.copy()
    child_cpu = cpu_seconds(child.pid) if child is not None else 0.0
    figures = await burst(engine, tracker, jobs)
    for part in ("publish", "tick"):
        figures[f"console_{part}_ms_per_job"] = (CONSOLE_CPU[part] - console_cpu[part]) / jobs * 1e3
    if child is not None:
        figures["watchers_cpu_ms_per_job"] = (cpu_seconds(child.pid) - child_cpu) / jobs * 1e3
    # let the last tick go out and the writers flush what is due, for the figures below
    await trio.sleep(0.5 + server.hub.tick_interval())
    after = server.statistics()
    figures.update(
        watchers=count,
        stalled=stalled,
        connections=after.get("connections", 0),
        frames=frames if count else "-",
        sent_kb_per_job=(after.get("bytes_sent", 0) - before.get("bytes_sent", 0)) / jobs / 1e3,
        events_per_s=after.get("events_per_second", 0.0),
        events_missed=after.get("events_missed", 0) - before.get("events_missed", 0),
        ticks=after.get("ticks", 0) - before.get("ticks", 0),
        frames_built=after.get("frames_built", 0) - before.get("frames_built", 0),
        frames_sent=after.get("frames_sent", 0) - before.get("frames_sent", 0),
        frames_direct=after.get("frames_direct", 0) - before.get("frames_direct", 0),
        stalled_closed=after.get("refused", {}).get("stalled", 0)
        - before.get("refused", {}).get("stalled", 0),
    )
    if child is not None:
        assert child.stdin is not None
        await child.stdin.aclose()
        with trio.move_on_after(10):
            while chunk := await child.stdout.receive_some():
                line += chunk
            await child.wait()
        report = json.loads(line.splitlines()[-1]) if line.strip().endswith(b"}") else {}
        figures["latency_ms"] = report.get("latency_ms", {})
        for q in ("p50", "p99"):
            figures[f"latency_{q}_ms"] = figures["latency_ms"].get(q)
        if child.returncode is None:
            child.kill()
            await child.wait()
        with trio.move_on_after(30):  # the next case starts with this one's sessions gone
            while server.statistics()["connections"]:  # noqa: ASYNC110
                await trio.sleep(0.05)
    return figures


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases: list[tuple[int, str]] = []
    for _ in range(args.rounds):  # interleaved, so that a drift in load touches every case
        cases.append((0, "-"))
        cases += [(count, frames) for count in args.watchers for frames in args.frames]
    cases.append((0, "-"))
    with tempfile.TemporaryDirectory(prefix="wfe-bench-console-") as tmp:
        config = workspace(Path(tmp), agents=2, slots=4)
        token = read_token(config)
        async with open_engine(config) as engine, trio.open_nursery() as nursery:
            await wait_for_agents(engine, 2)
            load_ops()
            server = ConsoleServer(
                engine,
                bootstrap_token=token,
                limits=Limits(flush_interval=args.flush, event_frames_per_second=args.fps),
            )
            measure_console(server)
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            url = f"ws://127.0.0.1:{port}/"
            tracker = Tracker(times=False)
            await nursery.start(tracker.run, engine.repo)
            await burst(engine, tracker, min(100, args.jobs))  # warm up
            rows = []
            for count, frames in cases:
                stalled = int(count * args.stalled)
                row = await run_case(
                    engine, server, tracker, url, token, count, stalled, args.jobs, frames,
                    args.watchers_idle,
                )  # fmt: skip
                print(
                    f"  {count} watchers ({stalled} stalled, {frames}): {row['jobs_per_s']:.1f} jobs/s",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
            nursery.cancel_scope.cancel()
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        url, token, count, stalled, frames, idle = argv[1:7]
        if idle == "idle":  # run only on CPU time the engine and its agents leave over
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        trio.run(watchers, url, token, int(count), int(stalled), frames == "zlib")
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.console_watchers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--jobs", type=int, default=600, help="noop jobs per burst (default 600)")
    parser.add_argument(
        "--watchers", default="200,500", help="watcher counts to compare with 0 (default 200,500)"
    )
    parser.add_argument(
        "--stalled", type=float, default=0.25, help="fraction of watchers that never read (0.25)"
    )
    parser.add_argument(
        "--flush",
        type=float,
        default=Limits().flush_interval,
        help="the console's flush_interval (s)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=Limits().event_frames_per_second,
        help="the console's event_frames_per_second, for all streams together",
    )
    parser.add_argument(
        "--frames",
        default="plain,zlib",
        help="how watchers take events: plain (text JSON), zlib (subscribe with compress);"
        " each is a case (default plain,zlib)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="times each case runs, interleaved (default 2)"
    )
    parser.add_argument(
        "--watchers-idle",
        action="store_true",
        help="run the watchers' process as SCHED_IDLE: only on CPU the engine and agents leave,"
        " as if the watchers were on other machines (they read late when the CPUs are busy)",
    )
    parser.add_argument("--quick", action="store_true", help="300 jobs, 200 watchers, one round")
    args = parser.parse_args(argv)
    args.watchers = [int(w) for w in args.watchers.split(",") if w]
    args.frames = [f for f in args.frames.split(",") if f]
    if not set(args.frames) <= {"plain", "zlib"}:
        parser.error(f"--frames: expected plain and/or zlib, not {','.join(args.frames)}")
    if args.quick:
        args.jobs, args.watchers, args.rounds = 300, [200], 1
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows = trio.run(main_async, args)
    figures = {
        "machine": machine(),
        "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "cases": rows,
    }
    print(
        machine_line(figures["machine"]) + f"  load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(
        f"\nBurst of {args.jobs} noop jobs through 2 local agents x 4 slots, with N console watchers subscribed to every event"
        + (" (watchers' process SCHED_IDLE)" if args.watchers_idle else "")
    )
    print(
        table(
            rows,
            [
                ("watchers", "watchers", ""),
                ("stalled", "stalled", ""),
                ("frames", "frames", ""),
                ("jobs_per_s", "jobs/s", ".1f"),
                ("engine_cpu_ms_per_job", "engine cpu ms/job", ".2f"),
                ("console_publish_ms_per_job", "of it hub publish", ".3f"),
                ("console_tick_ms_per_job", "hub tick", ".3f"),
                ("watchers_cpu_ms_per_job", "watchers' process cpu ms/job", ".2f"),
                ("sent_kb_per_job", "console kB sent/job", ".1f"),
                ("ticks", "ticks", ""),
                ("frames_sent", "frames sent", ""),
                ("frames_direct", "of them direct", ""),
                ("latency_p50_ms", "commit->watcher p50 ms", ""),
                ("latency_p99_ms", "p99 ms", ""),
                ("events_per_s", "events/s", ".0f"),
                ("events_missed", "events missed (all watchers)", ""),
                ("stalled_closed", "stalled closed", ""),
                ("failed", "failed", ""),
            ],
        )
    )
    base = statistics.median(r["jobs_per_s"] for r in rows if r["watchers"] == 0)
    base_cpu = statistics.median(r["engine_cpu_ms_per_job"] for r in rows if r["watchers"] == 0)
    summary = {}
    for count in args.watchers:
        for frames in args.frames:
            same = [r for r in rows if r["watchers"] == count and r["frames"] == frames]
            jobs_s = statistics.median(r["jobs_per_s"] for r in same)
            cpu = statistics.median(r["engine_cpu_ms_per_job"] for r in same)
            summary[f"{count} {frames}"] = {"jobs_per_s": jobs_s, "engine_cpu_ms_per_job": cpu}
            print(
                f"{count} watchers ({frames}): median {jobs_s:.1f} jobs/s, {(jobs_s - base) / base * 100:+.0f}%"
                f" against the median of the 0-watcher runs ({base:.1f});"
                f" engine {cpu:.2f} ms/job against {base_cpu:.2f} ({cpu - base_cpu:+.2f})"
            )
    figures["summary"] = summary
    print(f"({time.perf_counter() - started:.0f} s)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
