"""The work queue's speed: deposits per second, and withdraw -> update cycles per second with
1, 2 and 4 worker processes, beside Celery + Redis doing the same no-op through as many.

Run from the repository root: ``python -m bench.work_queue [--quick] [--rounds R] [--works M]
[--no-celery]``. wfe runs as a real ``wfe engine`` process (no agents) on a temporary
workspace; its clients speak the console protocol over loopback like any pull worker.

* deposits/s: one work per call, one after the other (``Work.deposit`` over one connection),
  and batched (1,000 works per ``work.deposit``, one transaction each);
* cycles/s, ``wfe`` (the queue): M works are deposited, then N processes each loop withdraw ->
  call a no-op in process -> update success until the bucket is empty;
* cycles/s, ``wfe run`` (the shipped worker): the same with N ``wfe work run`` processes,
  which start a child process per work (the timeout is enforced by killing it): this is the
  cost of that isolation;
* Celery 5 + Redis (Debian's ``redis-server``, started here on loopback with
  ``appendonly yes``, ``appendfsync everysec``: like SQLite's WAL with ``synchronous=NORMAL``,
  every task survives a crash of the process): M ``noop`` tasks are sent (one by one, and as
  one ``group``), then a prefork worker with concurrency N drains them; ``acks_late`` (a lost
  worker's task runs again, as a lost wfe worker's work does) and a Redis result backend.

Cycle rates come from each system's own records, the same way for both: (M - 1) divided by
the time from the first to the last completion stored (works' ``stop``, tasks' ``date_done``),
so process start-up is not counted. Rounds interleave the systems; figures are medians, and
the load average is printed before and after. The last line is one JSON object with every
figure. Celery and redis-py come from the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from bench._common import machine, machine_line, missed, table
from wfe.engine.cli.demo import make_workspace

TARGET_DEPOSITS = 2_000.0  # works deposited per second, batched
WORKERS = (1, 2, 4)
PIPELINE = "bench-noop"


def noop(**parameters: Any) -> None:
    """The function every worker runs."""
    return None


# --- wfe --------------------------------------------------------------------------------------


@contextmanager
def wfe_engine(root: Path) -> Iterator[Path]:
    """A ``wfe engine`` process on a fresh workspace (no agents); yields its wfe.toml."""
    config = make_workspace(root / "ws", agents=0)
    path = config.root / "wfe.toml"
    with open(root / "engine.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "wfe", "engine", "--config", str(path)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not (config.run_dir / "api.port").exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "engine.log").read_text())
                time.sleep(0.05)
            yield path
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def _env(config: Path) -> dict[str, str]:
    return {**os.environ, "WFE_CONFIG": str(config)}


async def _deposit_rates(single: int, batches: int, batch: int) -> dict[str, float]:
    from wfe.work import Work, open_bucket

    async with open_bucket() as bucket:
        started = time.perf_counter()
        for n in range(single):
            await bucket.deposit([Work(pipeline="bench-single", parameters={"n": n})])
        single_rate = single / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(batches):
            works = [Work(pipeline="bench-batched", parameters={"n": n}) for n in range(batch)]
            await bucket.deposit(works)
        batched_rate = batches * batch / (time.perf_counter() - started)
    return {"single": single_rate, "batched": batched_rate}


def deposit_rates(config: Path, single: int, batches: int, batch: int) -> dict[str, float]:
    os.environ["WFE_CONFIG"] = str(config)
    return trio.run(_deposit_rates, single, batches, batch)


async def _drain(pipeline: str) -> int:
    """A worker process: withdraw -> no-op -> update (and withdraw the next) until the
    bucket is empty."""
    from wfe.work import open_bucket

    done = 0
    async with open_bucket() as bucket:
        client = bucket.client
        work = (await client.call("work.withdraw", pipeline=pipeline))["work"]
        while work is not None:
            noop(**(work["parameters"] or {}))
            both = await client.call(
                "work.update",
                id=work["id"],
                attempt=work["attempt"],
                status="success",
                withdraw={"pipeline": pipeline},
            )  # the update also withdraws the next work, as `wfe work run` does
            work = both["next"]
            done += 1
        return done


async def _deposit(pipeline: str, count: int, function: str | None = None) -> None:
    from wfe.work import Work, open_bucket

    async with open_bucket() as bucket:
        for start in range(0, count, 1000):
            extra = {"function": function} if function else {}
            await bucket.deposit(
                [Work(pipeline=pipeline, **extra) for _ in range(min(1000, count - start))]
            )


async def _stops(pipeline: str, count: int) -> list[float]:
    from wfe.work import open_bucket

    stops: list[float] = []
    async with open_bucket() as bucket:
        for offset in range(0, count, 10_000):
            found = await bucket.client.call(
                "work.find", pipeline=pipeline, status="success", limit=10_000, offset=offset
            )
            stops += [w["stop"] for w in found["works"]]
    return stops


def _rate(stops: list[float], expected: int) -> float:
    if len(stops) != expected:
        raise RuntimeError(f"{len(stops)} of {expected} recorded: not every one is durable")
    return (len(stops) - 1) / (max(stops) - min(stops))


def wfe_cycles(config: Path, workers: int, works: int, tag: str) -> float:
    pipeline = f"{PIPELINE}-{tag}"
    trio.run(_deposit, pipeline, works)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.work_queue", "--drain", pipeline], env=_env(config)
        )
        for _ in range(workers)
    ]
    for process in processes:
        if process.wait(timeout=600) != 0:
            raise RuntimeError("a drain worker failed")
    return _rate(trio.run(_stops, pipeline, works), works)


def wfe_run_cycles(config: Path, workers: int, works: int, tag: str, cwd: Path) -> float:
    """The same through ``wfe work run`` (a child process per work)."""
    pipeline = f"{PIPELINE}-run-{tag}"
    trio.run(_deposit, pipeline, works)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wfe",
                "work",
                "run",
                pipeline,
                "bench.work_queue.noop",
                "--sleep",
                "0.05",
            ],
            env=_env(config),
            cwd=cwd,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(workers)
    ]

    async def count() -> int:
        from wfe.work import open_bucket

        async with open_bucket() as bucket:
            return int(
                (await bucket.client.call("work.count", pipeline=pipeline, status="success"))[
                    "count"
                ]
            )

    try:
        while trio.run(count) < works:
            time.sleep(0.2)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
    return _rate(trio.run(_stops, pipeline, works), works)


# --- Celery + Redis ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(root: Path) -> Iterator[str]:
    """Debian's redis-server on loopback, persisting every write (AOF, fsync each second)."""
    port = _free_port()
    data = root / "redis"
    data.mkdir(parents=True)
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _make_celery() -> Any:
    from celery import Celery

    url = os.environ.get("WFE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
    app = Celery("wfe_bench", broker=url, backend=url)
    app.conf.update(
        task_acks_late=True,
        result_expires=None,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name="noop")(noop)
    return app


def __getattr__(name: str) -> Any:
    if name == "celery_app":  # `celery -A bench.work_queue:celery_app worker`
        app = _make_celery()
        globals()["celery_app"] = app
        return app
    raise AttributeError(name)


def celery_send(url: str, tasks: int, *, grouped: bool) -> float:
    """Send ``tasks`` no-op tasks; return tasks sent per second."""
    os.environ["WFE_BENCH_REDIS"] = url
    app = _make_celery()
    task = app.tasks["noop"]
    started = time.perf_counter()
    if grouped:
        from celery import group

        group(task.s() for _ in range(tasks)).apply_async()
    else:
        for _ in range(tasks):
            task.apply_async()
    rate = tasks / (time.perf_counter() - started)
    app.close()
    return rate


def celery_cycles(url: str, workers: int, tasks: int) -> float:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    celery_send(url, tasks, grouped=False)
    env = {**os.environ, "WFE_BENCH_REDIS": url}
    errors = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.work_queue:celery_app", "worker",
         "-P", "prefork", "-c", str(workers), "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-l", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(keys := client.keys("celery-task-meta-*")) < tasks:
            if time.monotonic() > deadline or process.poll() is not None:
                errors.seek(0)
                tail = errors.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"celery did not finish: {len(keys)} of {tasks} done\n{tail}")
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    metas = [json.loads(m) for m in client.mget(keys)]
    assert all(m["status"] == "SUCCESS" for m in metas)
    stops = [datetime.fromisoformat(m["date_done"]).timestamp() for m in metas]
    return _rate(stops, tasks)


# --- the run ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.work_queue", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer works and one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--works", type=int, default=2000, help="works per cycle measurement")
    parser.add_argument("--run-works", type=int, default=1000, help="works for wfe work run")
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument("--drain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain:
        trio.run(_drain, args.drain)
        return 0
    if args.quick:
        args.rounds, args.works, args.run_works = 1, 500, 300
    celery = not args.no_celery and shutil.which("redis-server") is not None
    if not args.no_celery and not celery:
        print("redis-server not found: Celery is not measured (apt-get install redis-server)")
    figures: dict[str, Any] = {"machine": machine()}
    print(
        f"work queue benchmark: {args.rounds} round(s), {args.works} works per cycle figure",
        flush=True,
    )
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)
        print(f"  {key:<28} {value:>10,.0f} /s", flush=True)

    with tempfile.TemporaryDirectory(prefix="wfe-bench-wq-") as tmp:
        root = Path(tmp)
        with wfe_engine(root) as config:
            os.environ["WFE_CONFIG"] = str(config)
            for r in range(args.rounds):
                print(f"round {r + 1}")
                rates = deposit_rates(config, 300, 10, 1000)
                add("wfe deposit single", rates["single"])
                add("wfe deposit batched", rates["batched"])
                for n in WORKERS:
                    add(f"wfe cycles {n}", wfe_cycles(config, n, args.works, f"{r}-{n}"))
                    if celery:
                        with redis_server(root / f"r{r}-{n}") as url:
                            if n == 1:
                                add("celery send single", celery_send(url, 2000, grouped=False))
                                add("celery send group", celery_send(url, 2000, grouped=True))
                            add(f"celery cycles {n}", celery_cycles(url, n, args.works))
            for n in WORKERS:  # the shipped worker, child process per work: once
                add(
                    f"wfe work run cycles {n}",
                    wfe_run_cycles(config, n, args.run_works, f"{n}", Path.cwd()),
                )
    figures["machine"]["loadavg_after"] = round(os.getloadavg()[0], 2)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    figures["medians"] = medians
    figures["samples"] = samples
    rows = []
    for n in WORKERS:
        wfe_rate, celery_rate = medians[f"wfe cycles {n}"], medians.get(f"celery cycles {n}")
        rows.append(
            {
                "workers": n,
                "wfe": wfe_rate,
                "wfe_run": medians[f"wfe work run cycles {n}"],
                "celery": celery_rate,
                "ratio": None if celery_rate is None else wfe_rate / celery_rate,
            }
        )
    print()
    print(f"deposits/s: single {medians['wfe deposit single']:,.0f},"
          f" batched {medians['wfe deposit batched']:,.0f}"
          + (f"; celery sends/s: single {medians['celery send single']:,.0f},"
             f" group {medians['celery send group']:,.0f}" if celery else ""))  # fmt: skip
    print(
        table(
            rows,
            [
                ("workers", "worker processes", ""),
                ("wfe", "wfe cycles/s", ",.0f"),
                ("wfe_run", "wfe work run cycles/s", ",.0f"),
                ("celery", "celery cycles/s", ",.0f"),
                ("ratio", "wfe/celery", ".2f"),
            ],
        )
    )
    print(machine_line(figures["machine"]))
    for line in (
        missed("batched deposits/s", medians["wfe deposit batched"], TARGET_DEPOSITS, higher_is_better=True),
        None if not celery else missed("wfe/celery with 4 workers", rows[-1]["ratio"], 1.0, higher_is_better=True),
    ):  # fmt: skip
        if line:
            print(line)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
