"""Chaos run: real engine, agents and Prosody SIGKILLed at random while jobs run; then the books.

    python -m bench.chaos --minutes 10 --seed 1 [--faults engine,local,xmpp,prosody,disk]

A Prosody, a ``wfe engine`` with two local agents it starts itself, and two ``wfe agent
--xmpp`` processes run a workload submitted through the console: each job is one run of the
``chaos_work`` RScript (written here), which appends a START and an END line (job, attempt,
pid, monotonic time) to an executions log outside the engine's books and prints known lines.
While jobs arrive (about one a second), a driver follows a fault schedule drawn from the seed:
SIGKILL the engine (down 0-60 s), a local agent (the engine should restart it), an XMPP agent
(back after 0-60 s, or never), Prosody (down 0-15 s), or fill the workspace's disk (a tmpfs
mounted here; ``disk`` only when asked). Then every fault is undone, the jobs drain, and
``bench.chaos_checks`` judges: every job ended, no event lost, ids contiguous, integrity_check
ok, no two executions of a job at once, a second execution only after its agent was cut off
longer than the lease, no job failed whose script exited 0, output whole, no orphan.

It prints faults by kind, jobs, executions, duplicates, each violation, and a JSON last line;
the exit status is 1 when anything was violated. docs/reliability.md has figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import trio

from bench._common import machine
from bench.chaos_checks import (
    SCRIPT,
    TERMINAL,
    Verdict,
    agent_changes,
    events_kept,
    judge_books,
    judge_executions,
    judge_orphans,
    merge_cutoffs,
    read_books,
)
from bench.chaos_cluster import (
    ENGINE_USER,
    Cluster,
    Watcher,
    free_port,
    kill,
    mount_tmpfs,
    unmount,
    write_workspace,
)
from bench.chaos_plan import KINDS, WORKLOAD, Fault, Job, Options, plan_faults, plan_jobs
from wfe import engine
from wfe.engine.cli.client import ClientError, connect
from wfe.engine.devtools.prosody import ProsodyServer

# --- the console ---------------------------------------------------------------------------------

CODE = str(Path(engine.__file__ or ".").resolve().parent.parent)


@attrs.define
class Console:
    """One fresh connection per call, so that an engine restart costs nothing to handle."""

    url: str
    token: str

    async def call(self, op: str, **args: Any) -> Any:
        with trio.fail_after(15):
            async with connect(self.url, self.token) as client:
                return await client.call(op, **args)


async def submit_jobs(console: Console, jobs: list[Job], log: Path, out: dict[str, Any]) -> None:
    """Submit each planned job at its time; note which the engine confirmed."""
    start = time.monotonic()
    for job in jobs:
        await trio.sleep_until(_trio_at(start + job.at))
        params = {"n": job.n, "seconds": job.seconds, "lines": job.lines, "code": job.code}
        params["quiet"] = job.quiet
        try:
            reply = await console.call("run", rscript=SCRIPT, params={**params, "log": str(log)})
        except (ClientError, trio.TooSlowError, OSError) as exc:
            why = str(exc).splitlines() or ["no answer within 15 s"]  # TooSlowError says nothing
            out["refused"][job.n] = why[0][:160]
        else:
            out["confirmed"][job.n] = reply["job"]


def _trio_at(monotonic: float) -> float:
    return trio.current_time() + (monotonic - time.monotonic())


async def record_events(console: Console, seen: dict[int, tuple[str, str, Any]]) -> None:
    """Every 2 s, fetch the events committed since the last one seen (what the console served)."""
    while True:
        await read_new_events(console, seen)
        await trio.sleep(2.0)


async def read_new_events(console: Console, seen: dict[int, tuple[str, str, Any]]) -> None:
    with _quiet():
        while True:
            after = max(seen, default=0)
            events = await console.call("events", after=after, limit=5000)
            for e in events:
                seen[e["id"]] = (e["kind"], e["subject"], e["data"])
            if len(events) < 5000:
                return


class _quiet:
    """Swallow a failed console call (the engine may be down): the next try goes on."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, ClientError | trio.TooSlowError | OSError)


async def wait_for_agents(console: Console, names: list[str], seconds: float) -> None:
    """Until every agent in ``names`` is connected; raise ``RuntimeError`` after ``seconds``."""
    connected: set[str] = set()
    with trio.move_on_after(seconds):
        while not set(names) <= connected:
            with _quiet():
                rows = await console.call("agents")
                connected = {r["name"] for r in rows if r["state"] == "connected"}
            await trio.sleep(0.5)
        return
    raise RuntimeError(
        f"agents not connected after {seconds:g} s: {sorted(set(names) - connected)}"
    )


# --- faults ------------------------------------------------------------------------------------


async def drive_faults(
    cluster: Cluster, faults: list[Fault], done: Counter[str], skipped: Counter[str]
) -> None:
    """Inject each fault at its time (skipped when its target is already down)."""
    start = time.monotonic()
    busy: set[str] = set()
    async with trio.open_nursery() as nursery:
        for fault in faults:
            await trio.sleep_until(_trio_at(start + fault.at))
            if fault.target in busy or fault.target in cluster.never:
                skipped[fault.kind] += 1
                continue
            nursery.start_soon(_inject, cluster, fault, busy, done, skipped)


async def _inject(
    cluster: Cluster, fault: Fault, busy: set[str], done: Counter[str], skipped: Counter[str]
) -> None:
    busy.add(fault.target)
    try:
        if fault.kind == "engine":
            hit = await cluster.kill_engine()
        elif fault.kind == "local":
            hit = cluster.kill_local(fault.target)
        elif fault.kind == "xmpp":
            hit = await cluster.kill_xmpp(fault.target)
            if hit and fault.down is None:
                cluster.never.add(fault.target)
        elif fault.kind == "prosody":
            hit = await cluster.kill_prosody()
        else:
            hit = await cluster.fill_disk() >= 0
        (done if hit else skipped)[fault.kind] += 1
        if hit and fault.down:
            await trio.sleep(fault.down)
    finally:
        with trio.CancelScope(shield=True):
            await _undo(cluster, fault)
            busy.discard(fault.target)


async def _undo(cluster: Cluster, fault: Fault) -> None:
    if fault.kind == "engine":
        await cluster.start_engine()
    elif fault.kind == "xmpp" and fault.target not in cluster.never:
        if not cluster.xmpp_alive(fault.target):
            await cluster.start_xmpp(fault.target)
    elif fault.kind == "prosody":
        await cluster.start_prosody()
    elif fault.kind == "disk":
        cluster.free_disk()


async def drain(cluster: Cluster, seconds: float) -> float:
    """Wait until every workload job has ended (read from the repository); return the seconds."""
    start = time.monotonic()
    db = cluster.workspace / "wfe.db"
    with trio.move_on_after(seconds):
        while _unended(db) != 0:  # noqa: ASYNC110 - another process writes the file
            await trio.sleep(1.0)
    return time.monotonic() - start


def _unended(db: Path) -> int | None:
    """Workload jobs not yet ended, read from the repository file (None: could not read)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            (count,) = conn.execute(
                "SELECT count(*) FROM jobs WHERE name = ? AND state NOT IN (?, ?, ?)",
                (SCRIPT, *sorted(TERMINAL)),
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(count)


# --- the run -------------------------------------------------------------------------------------


async def run_chaos(options: Options) -> dict[str, Any]:
    """Run the whole chaos campaign and return the figures (``violations`` lists what broke)."""
    root = Path(options.root) if options.root else Path(tempfile.mkdtemp(prefix="wfe-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    faults, jobs = plan_faults(options), plan_jobs(options)
    figures: dict[str, Any] = {"seed": options.seed, "minutes": options.minutes, "root": str(root)}
    figures["machine"] = machine()
    figures["code"] = CODE  # the tree under test
    workspace = root / "ws"
    if "disk" in options.faults:
        mount_tmpfs(workspace, options.disk_mb)
    workspace.mkdir(exist_ok=True)
    users = [f"agent{k}" for k in range(1, options.xmpp + 1)]
    server = ProsodyServer(
        root / "prosody", users={u: secrets.token_urlsafe(12) for u in [ENGINE_USER, *users]}
    )
    scripts = root / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / f"{SCRIPT}.py").write_text(WORKLOAD)
    log = root / "executions.log"
    log.touch()
    cluster = Cluster(
        root=root, server=server, xmpp_users=users, local=options.local,
        api_port=free_port(), workspace=workspace, log=log,
    )  # fmt: skip
    watcher = Watcher(cluster)
    seen: dict[int, tuple[str, str, Any]] = {}
    submitted: dict[str, Any] = {"confirmed": {}, "refused": {}}
    done: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    verdict = Verdict()
    offset = time.time() - time.monotonic()  # events are stamped with the wall clock
    try:
        await trio.to_thread.run_sync(server.start)
        write_workspace(cluster, lease=options.lease, scripts=scripts)
        console = Console(
            f"ws://127.0.0.1:{cluster.api_port}/", (workspace / "token").read_text().strip()
        )
        async with trio.open_nursery() as nursery:
            cluster._nursery = nursery
            await cluster.start_engine()
            for user in users:
                await cluster.start_xmpp(user)
            await wait_for_agents(console, cluster.agent_names(), 90)
            nursery.start_soon(watcher.run)
            nursery.start_soon(record_events, console, seen)
            began = time.monotonic()
            with trio.move_on_after(options.minutes * 60):
                async with trio.open_nursery() as phase:
                    phase.start_soon(drive_faults, cluster, faults, done, skipped)
                    phase.start_soon(submit_jobs, console, jobs, log, submitted)
            figures["fault_phase_s"] = round(time.monotonic() - began, 1)
            cluster.free_disk()
            await cluster.start_prosody()
            await cluster.start_engine()
            figures["drain_s"] = round(await drain(cluster, options.drain), 1)
            watcher.sample()
            await read_new_events(console, seen)
            judge_orphans(verdict, watcher.alive_scripts(), "once every job had ended")
            nursery.cancel_scope.cancel()
    except BaseException:  # the harness itself failed: leave no process or mount behind
        with trio.CancelScope(shield=True):
            await cluster.stop()
            for pid in cluster.leftovers():
                kill(pid)
            server.stop()
            if "disk" in options.faults:
                unmount(workspace)
        raise
    finally:
        with trio.CancelScope(shield=True):
            figures["forced_stops"] = await cluster.stop()
            if server.running:
                await trio.to_thread.run_sync(server.stop)
    watcher.close()
    leftovers = cluster.leftovers()
    for pid in leftovers:
        kill(pid)
    figures["leftover_processes"] = list(leftovers.values())
    executions = sorted(watcher.executions.values(), key=lambda r: r.start)
    books = read_books(workspace / "wfe.db")
    agents = {key: row["agent"] for key, row in books["attempts"].items()}
    changes = agent_changes(workspace / "wfe.db", offset)
    cutoffs = {
        name: merge_cutoffs(watcher.cutoffs.get(name, []), changes.get(name, []))
        for name in cluster.agent_names()
    }
    figures["cutoffs_over_lease"] = sum(
        1 for spans in cutoffs.values() for s, e in spans if e - s >= options.lease
    )
    judge_executions(verdict, executions, agents, cutoffs, lease=options.lease, slack=options.slack)
    judge_books(verdict, books, executions, submitted["confirmed"])
    for event_id in events_kept(workspace / "wfe.db", seen):
        verdict.add(
            "event_lost", f"event {event_id}", "served by the console, not in the repository"
        )
    for line in cluster.engine_exits:
        verdict.add("engine_exit", "engine", line)
    figures.update(verdict.figures)
    figures.update(
        lease=options.lease,
        lease_in_engine=cluster.lease_supported,
        faults_planned=dict(Counter(f.kind for f in faults)),
        faults=dict(done),
        faults_skipped=dict(skipped),
        submitted=len(jobs),
        confirmed=len(submitted["confirmed"]),
        refused=len(submitted["refused"]),
        refused_why=dict(Counter(why.split(":")[0] for why in submitted["refused"].values())),
        events_seen=len(seen),
        violations=verdict.counts(),
        examples=[v.line() for v in verdict.violations[:40]],
    )
    figures["machine"]["loadavg_after"] = round(os.getloadavg()[0], 2)
    if "disk" in options.faults:
        shutil.copytree(
            workspace, root / "ws-kept", ignore=shutil.ignore_patterns(".chaos-fill", "*.sock")
        )
        unmount(workspace)  # what was on the small disk stays readable in ws-kept/
    if not options.root and not verdict.violations:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def report(figures: dict[str, Any]) -> list[str]:
    m = figures["machine"]
    lines = [
        f"chaos seed {figures['seed']}: {figures['fault_phase_s']} s of faults, drain {figures['drain_s']} s;"
        f" {m['nproc']} cpus, load {m['loadavg_before']} -> {m['loadavg_after']}",
        f"lease {figures['lease']:g} s ({'in' if figures['lease_in_engine'] else 'NOT known to'} the engine)",
        "faults injected: "
        + ", ".join(f"{k} {v}" for k, v in sorted(figures["faults"].items()))
        + (f" (skipped: {figures['faults_skipped']})" if figures["faults_skipped"] else ""),
        f"submitted {figures['submitted']}, confirmed {figures['confirmed']}, refused {figures['refused']};"
        f" jobs {figures.get('jobs', 0)} {figures.get('states', {})}",
        f"executions {figures.get('executions', 0)}, duplicates {figures.get('duplicates', 0)}"
        f" ({figures.get('duplicates_after_lease', 0)} after a cut-off longer than the lease),"
        f" extra executions {figures.get('extra_executions', 0)};"
        f" cut-offs longer than the lease {figures.get('cutoffs_over_lease', 0)}",
        f"events seen {figures['events_seen']}; leftover processes {len(figures['leftover_processes'])}",
        "violations: "
        + (", ".join(f"{k} {v}" for k, v in figures["violations"].items()) or "none"),
    ]
    lines += [f"  {line}" for line in figures["examples"]]
    lines += [f"  forced stop: {line}" for line in figures["forced_stops"]]
    lines += [f"  leftover: {line}" for line in figures["leftover_processes"][:10]]
    if figures["violations"]:
        lines.append(f"kept for inspection: {figures['root']}")
    return lines


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="fault phase length (default 5)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--faults",
        default="engine,local,xmpp,prosody",
        help=f"comma-separated, of {','.join(KINDS)}",
    )
    parser.add_argument("--lease", type=float, default=60.0, help="[agents] lease in seconds")
    parser.add_argument("--rate", type=float, default=1.0, help="jobs submitted per second")
    parser.add_argument("--drain", type=float, default=240.0, help="seconds for jobs to end after")
    parser.add_argument("--root", default="", help="keep the run's files here")
    defaults = Options()
    for name, default, what in (
        ("engine-down", defaults.engine_down, "longest engine outage"),
        ("xmpp-down", defaults.xmpp_down, "longest XMPP agent outage"),
        ("prosody-down", defaults.prosody_down, "longest Prosody outage"),
        ("gap", defaults.gap[1], "longest pause between two faults (the shortest is a quarter)"),
    ):
        parser.add_argument(f"--{name}", type=float, default=default, help=f"{what} (s)")
    args = parser.parse_args(argv)
    faults = tuple(k for k in args.faults.split(",") if k)
    bad = [k for k in faults if k not in KINDS]
    if bad:
        parser.error(f"unknown fault kind(s) {', '.join(bad)}: choose from {', '.join(KINDS)}")
    for name in (
        "minutes",
        "lease",
        "rate",
        "drain",
        "engine_down",
        "xmpp_down",
        "prosody_down",
        "gap",
    ):
        value = getattr(args, name)
        if not math.isfinite(value) or value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    return Options(
        minutes=args.minutes, seed=args.seed, faults=faults, lease=args.lease,
        rate=args.rate, drain=args.drain, root=args.root, engine_down=args.engine_down,
        xmpp_down=args.xmpp_down, prosody_down=args.prosody_down, gap=(args.gap / 4, args.gap),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    figures = trio.run(run_chaos, options)
    print("\n".join(report(figures)))
    print(json.dumps({k: v for k, v in figures.items() if k != "examples"}, sort_keys=True))
    return 1 if figures["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
