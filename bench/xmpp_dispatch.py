"""Agents over XMPP beside the local transport: noop jobs/s, dispatch-to-result latency, output MB/s.

Run from the repository root: ``python -m bench.xmpp_dispatch [--quick] [--agents 1,2,4]
[--slots N] [--jobs N] [--latency-jobs N] [--output-mb N] [--no-upload]``. It starts a private
Prosody on loopback (``wfe.engine.devtools.prosody``, plaintext, with its XEP-0363 upload service unless
``--no-upload``, as ``wfe xmpp-dev-server`` does) and, for each
transport and agent count, an engine (``open_engine`` on a temporary workspace): the local
transport with its own agent processes on the Unix socket, or ``[xmpp]`` with that many
``python -m wfe.agents --xmpp`` processes logged in to Prosody. Every job is the shipped ``noop``
RScript, signed, dispatched, verified, spooled, run, reported, committed and acknowledged.

Per engine: a burst of N jobs submitted at once (jobs/s, from first submit to last committed
result), then jobs one at a time (latency). Dispatch-to-result is from the committed
``dispatched`` state of the attempt to the committed end of the job, read from the event
stream. Streaming, with one agent: a script printing ``--output-mb`` MB, compressible text
(the shipped ``bigoutput``) and random bytes (a bench script), MB/s from dispatch to the
committed result, whose stored output is checked for size. Prosody's CPU per job shows where
the XMPP time goes. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from bench._common import (
    Stopwatch,
    Tracker,
    burst,
    cpu_seconds,
    latencies,
    machine,
    machine_line,
    missed,
    spool_agent_pids,
    table,
    wait_for_agents,
)
from wfe.engine.cli.demo import make_workspace
from wfe.engine.config import Config, XmppSection
from wfe.engine.devtools.prosody import ProsodyServer
from wfe.engine.runtime.daemon import Engine, open_engine

TARGET_PER_S = 300.0  # trivial jobs per second with two agents
TARGET_P50_MS = 5.0  # dispatch -> committed result, one job at a time
TARGET_MB_S = 20.0  # output streaming
SCRIPT = "noop"
ENGINE_USER = "engine"
#: Seconds an XMPP agent lives on without an engine: a benchmark that is killed (its engine
#: with it) leaves no agent reconnecting forever. (A parent-death signal would not do: trio
#: starts processes from a worker thread, and the signal follows the thread, not the process.)
AGENT_GIVE_UP = 20.0

RANDOM_OUTPUT = """\
#!/usr/bin/env python3
# wfe-rscript: 1
# name: randout
# version: 1.0
# interpreter: python3
# description: write N random bytes to stdout (incompressible output, for benchmarks)
# timeout: 600
# param size: int (required) how many bytes to write
# requires: cpus=1

import json, os, sys

with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
    left = json.load(f)["size"]
out = sys.stdout.buffer
while left > 0:
    block = os.urandom(min(left, 1 << 16))
    out.write(block)
    left -= len(block)
out.flush()
"""


# --- engines ------------------------------------------------------------------------------


@attrs.define
class Setup:
    """What one engine under test runs on."""

    transport: str  # "local" or "xmpp"
    agents: int
    slots: int
    root: Path
    server: ProsodyServer


def engine_config(setup: Setup, scripts: Path) -> Config:
    local = setup.agents if setup.transport == "local" else 0
    config = make_workspace(setup.root, agents=local, slots=setup.slots)
    config = attrs.evolve(config, engine=attrs.evolve(config.engine, rscripts=(str(scripts),)))
    if setup.transport == "xmpp":
        password = setup.root / "xmpp.password"
        password.write_text(setup.server.users[ENGINE_USER] + "\n")
        password.chmod(0o600)
        xmpp = XmppSection(
            enabled=True,
            jid=setup.server.jid(ENGINE_USER),
            password_file=str(password),
            host=setup.server.host,
            port=setup.server.port,
            tls="plain",
        )
        config = attrs.evolve(config, xmpp=xmpp)
    return config


async def start_xmpp_agents(setup: Setup, config: Config) -> list[trio.Process]:
    """``python -m wfe.agents --xmpp`` processes, one per agent account, logging to files."""
    processes = []
    for n in range(1, setup.agents + 1):
        user = f"agent{n}"
        home = setup.root / "xmpp-agents" / user
        home.mkdir(parents=True, exist_ok=True)
        password = home / "password"
        password.write_text(setup.server.users[user] + "\n")
        password.chmod(0o600)
        command = [
            sys.executable, "-m", "wfe.agents", "--xmpp", "--jid", setup.server.jid(user),
            "--password-file", str(password), "--server", setup.server.host,
            "--port", str(setup.server.port), "--tls", "plain",
            "--controller", setup.server.jid(ENGINE_USER),
            "--trusted-key", str(config.path(config.engine.public_key)),
            "--slots", str(setup.slots), "--spool", str(home / "spool"),
            "--workdir", str(home / "work"), "--log-level", "WARNING",
            "--give-up-after", f"{AGENT_GIVE_UP:g}",
        ]  # fmt: skip
        log_file = (home / "agent.log").open("ab")  # noqa: ASYNC230 - a local file, opened once
        try:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        finally:
            log_file.close()
        processes.append(process)
    return processes


def agent_pids(engine: Engine, processes: list[trio.Process]) -> list[int]:
    return [p.pid for p in processes] if processes else spool_agent_pids(engine)


# --- measurements -------------------------------------------------------------------------


async def one_at_a_time(engine: Engine, tracker: Tracker, n: int) -> dict[str, Any]:
    submitted: dict[str, float] = {}
    for _ in range(n):
        start = time.perf_counter()
        job = await engine.run_rscript(SCRIPT, {})
        submitted[job] = start
        await tracker.wait(job)
    return latencies(tracker, submitted)


async def stream(
    engine: Engine, tracker: Tracker, script: str, size: int, pids: list[int], prosody: int | None
) -> dict[str, Any]:
    """One job printing ``size`` bytes: MB/s from dispatch to the committed result, and the
    CPU seconds per MB each process spent (what bounds the rate on an idle machine)."""
    agents_before = [cpu_seconds(p) for p in pids]
    prosody_before = cpu_seconds(prosody) if prosody else 0.0
    with Stopwatch() as sw:
        job = await engine.run_rscript(script, {"size": size})
        state = await tracker.wait(job)
    mb = size / 1e6
    cpu = {
        "engine_cpu_s_per_mb": sw.cpu / mb,
        "agent_cpu_s_per_mb": sum(
            cpu_seconds(p) - c for p, c in zip(pids, agents_before, strict=True)
        )
        / mb,
        "prosody_cpu_s_per_mb": (cpu_seconds(prosody) - prosody_before) / mb if prosody else None,
    }
    stored = len(await engine.output(job))
    dispatched = tracker.at(job, "attempt.state", "dispatched")
    done = tracker.at(job, "job.state", state)
    assert dispatched is not None and done is not None
    seconds = done - dispatched
    busiest = max(v for v in cpu.values() if v is not None)
    return {
        "state": state,
        "bytes": size,
        "stored": stored,
        "seconds": seconds,
        "mb_s": mb / seconds,
        "cpu_bound_mb_s": 1 / busiest if busiest > 0 else None,
        **cpu,
    }


async def run_setup(
    setup: Setup, scripts: Path, args: argparse.Namespace, streaming: bool
) -> dict[str, Any]:
    config = engine_config(setup, scripts)
    tracker = Tracker()
    figures: dict[str, Any] = {
        "transport": setup.transport,
        "agents": setup.agents,
        "slots": setup.slots,
    }
    processes: list[trio.Process] = []
    prosody = setup.server.pid if setup.transport == "xmpp" else None
    started = time.perf_counter()
    try:
        async with open_engine(config) as engine, trio.open_nursery() as nursery:
            await nursery.start(tracker.run, engine.repo)
            if setup.transport == "xmpp":
                processes = await start_xmpp_agents(setup, config)
            with trio.fail_after(60):
                await wait_for_agents(engine, setup.agents)
            figures["startup_s"] = time.perf_counter() - started
            pids = agent_pids(engine, processes)
            await burst(
                engine,
                tracker,
                2 * setup.agents * setup.slots,
                script=SCRIPT,
                pids=pids,
                server_pid=prosody,
            )  # warm up
            figures["burst"] = await burst(
                engine, tracker, args.jobs, script=SCRIPT, pids=pids, server_pid=prosody
            )
            figures["sequential"] = await one_at_a_time(engine, tracker, args.latency_jobs)
            if streaming:
                size = int(args.output_mb * 1_000_000)
                figures["stream_text"] = await stream(
                    engine, tracker, "bigoutput", size, pids, prosody
                )
                figures["stream_random"] = await stream(
                    engine, tracker, "randout", size, pids, prosody
                )
            nursery.cancel_scope.cancel()
    finally:
        for process in processes:
            process.kill()
            await process.wait()
    return figures


# --- main ---------------------------------------------------------------------------------


def _tuned(settings: str) -> type[ProsodyServer]:
    """``ProsodyServer`` whose generated config also sets ``network_settings = { settings }``.

    For comparing server tuning only; it relies on ``ProsodyServer._config`` returning the
    config text with the global section first, which is true of engine/prosody.py today.
    """

    class TunedProsody(ProsodyServer):
        def _config(self, ssl: Any) -> str:
            text = super()._config(ssl)
            head, virtual_host, tail = text.partition("VirtualHost")
            return f"{head}network_settings = {{ {settings} }}\n{virtual_host}{tail}"

    return TunedProsody


async def run(root: Path, args: argparse.Namespace, figures: dict[str, Any]) -> None:
    scripts = root / "scripts"
    scripts.mkdir()
    (scripts / "randout.py").write_text(RANDOM_OUTPUT)
    users = {
        ENGINE_USER: "engine-pw",
        **{f"agent{n}": f"agent{n}-pw" for n in range(1, max(args.agents) + 1)},
    }
    server_class = (
        _tuned(args.prosody_network_settings) if args.prosody_network_settings else ProsodyServer
    )
    with server_class(root / "prosody", users=users, upload=not args.no_upload) as server:
        figures["results"] = []
        for transport in ("local", "xmpp"):
            for count in args.agents:
                setup = Setup(
                    transport=transport,
                    agents=count,
                    slots=args.slots,
                    root=root / f"{transport}-{count}",
                    server=server,
                )
                streaming = count == min(args.agents) and args.output_mb > 0
                print(
                    f"running {transport} with {count} agent(s) x {args.slots} slots ...",
                    file=sys.stderr,
                )
                figures["results"].append(await run_setup(setup, scripts, args, streaming))


def report(figures: dict[str, Any]) -> list[str]:
    print(machine_line(figures))
    if figures["prosody_network_settings"]:
        print(f"prosody network_settings = {{ {figures['prosody_network_settings']} }}")
    print()
    rows = [
        {
            "config": f"{f['transport']}: {f['agents']} x {f['slots']}",
            **f["burst"],
            **{f"seq_{k}": v for k, v in f["sequential"].items()},
        }
        for f in figures["results"]
    ]
    print(
        f"noop jobs: a burst of {figures['jobs']:,} (jobs/s, latency under load); then {figures['latency_jobs']} one at a time"
    )
    print(table(rows, [
        ("config", "transport: agents x slots", ""), ("per_s", "jobs/s", ",.0f"),
        ("dispatch_p50_ms", "burst disp->res p50", ",.1f"), ("dispatch_p99_ms", "p99", ",.1f"),
        ("seq_dispatch_p50_ms", "1-at-a-time disp->res p50", ",.2f"), ("seq_dispatch_p99_ms", "p99", ",.2f"),
        ("seq_p50_ms", "submit->res p50", ",.2f"), ("engine_cpu_ms", "engine cpu ms/job", ".2f"),
        ("agents_cpu_ms", "agents cpu ms/job", ".2f"), ("server_cpu_ms", "prosody cpu ms/job", ".2f"),
        ("failed", "failed", ""),
    ]))  # fmt: skip
    rows = []
    for f in figures["results"]:
        for key, label in (("stream_text", "text (bigoutput)"), ("stream_random", "random bytes")):
            if key in f:
                rows.append({"config": f"{f['transport']}: {label}", **f[key]})
    if rows:
        print()
        print(f"Output streaming, one agent: {figures['output_mb']:g} MB printed by one job")
        print(table(rows, [
            ("config", "transport: output", ""), ("mb_s", "MB/s", ",.1f"), ("seconds", "seconds", ".2f"),
            ("engine_cpu_s_per_mb", "engine cpu s/MB", ".3f"), ("agent_cpu_s_per_mb", "agent+script cpu s/MB", ".3f"),
            ("prosody_cpu_s_per_mb", "prosody cpu s/MB", ".3f"), ("cpu_bound_mb_s", "MB/s if cpu-bound", ",.1f"),
            ("stored", "bytes stored", ","), ("state", "job", ""),
        ]))  # fmt: skip
    print()
    lines = []
    xmpp = [f for f in figures["results"] if f["transport"] == "xmpp"]
    two = [f for f in xmpp if f["agents"] == 2]
    if two:
        per_s = two[0]["burst"]["per_s"]
        lines.append(
            missed(
                "XMPP throughput with two agents",
                per_s,
                TARGET_PER_S,
                higher_is_better=True,
                unit=" jobs/s",
            )
            or f"target met: {per_s:,.0f} jobs/s with two XMPP agents (target {TARGET_PER_S:g})"
        )
    if xmpp:
        p50 = min(f["sequential"]["dispatch_p50_ms"] for f in xmpp)
        lines.append(
            missed(
                "XMPP dispatch->result p50", p50, TARGET_P50_MS, higher_is_better=False, unit=" ms"
            )
            or f"target met: XMPP dispatch->result p50 {p50:.2f} ms (target < {TARGET_P50_MS:g} ms)"
        )
        streams = [f["stream_random"]["mb_s"] for f in xmpp if "stream_random" in f]
        texts = [f["stream_text"]["mb_s"] for f in xmpp if "stream_text" in f]
        if streams:
            lines.append(
                missed(
                    "XMPP streaming of random output",
                    streams[0],
                    TARGET_MB_S,
                    higher_is_better=True,
                    unit=" MB/s",
                )
                or f"target met: XMPP streams random output at {streams[0]:.1f} MB/s (target {TARGET_MB_S:g})"
            )
        if texts:
            lines.append(
                missed(
                    "XMPP streaming of text output",
                    texts[0],
                    TARGET_MB_S,
                    higher_is_better=True,
                    unit=" MB/s",
                )
                or f"target met: XMPP streams text output at {texts[0]:.1f} MB/s (target {TARGET_MB_S:g})"
            )
    for line in lines:
        print(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.xmpp_dispatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer jobs and (unless --output-mb) 5 MB of output, for a smoke run",
    )
    parser.add_argument("--agents", default="1,2,4", help="agent counts to compare (default 1,2,4)")
    parser.add_argument("--slots", type=int, default=4, help="slots per agent (default 4)")
    parser.add_argument(
        "--prosody-network-settings",
        default="",
        metavar="LUA",
        help='extra Prosody network_settings for the run, e.g. "min_wait = 0.00001"',
    )
    parser.add_argument("--jobs", type=int, default=400, help="jobs per burst (default 400)")
    parser.add_argument(
        "--latency-jobs", type=int, default=100, help="jobs run one at a time (default 100)"
    )
    parser.add_argument(
        "--output-mb",
        type=float,
        default=None,
        help="MB of output per streaming job (default 20; 5 with --quick)",
    )
    parser.add_argument(
        "--no-upload",
        action="store_true",
        help="run Prosody without its XEP-0363 upload service: all output goes in stanzas",
    )
    args = parser.parse_args()
    args.agents = sorted({int(a) for a in args.agents.split(",")})
    if args.quick:
        args.jobs, args.latency_jobs = 80, 20
    if args.output_mb is None:
        args.output_mb = 5.0 if args.quick else 20.0
    figures: dict[str, Any] = {
        **machine(),
        "jobs": args.jobs,
        "latency_jobs": args.latency_jobs,
        "output_mb": args.output_mb,
        "script": SCRIPT,
        "prosody_network_settings": args.prosody_network_settings,
        "upload": not args.no_upload,
        "targets": {
            "per_s_two_agents": TARGET_PER_S,
            "dispatch_p50_ms": TARGET_P50_MS,
            "mb_s": TARGET_MB_S,
        },
    }
    with tempfile.TemporaryDirectory(prefix="wfe-bench-xmpp-") as tmp:
        trio.run(run, Path(tmp), args, figures)
    figures["loadavg_after"] = round(os.getloadavg()[0], 2)
    figures["verdicts"] = report(figures)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
