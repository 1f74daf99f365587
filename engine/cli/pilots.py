"""``wfe pilots``: the pilot factory (batch jobs whose payload is a short-lived ``wfe agent``),
and ``wfe pilots list`` (the pilots the engine's books hold). Registered by ``build_parser``
in ``wfe.engine.cli.main``; docs/pilots.md.

The factory reaches the engine through its console, like every client: ``--config`` names the
engine's wfe.toml (its ``[api]`` address; ``[xmpp]`` gives the pilots' server, TLS and
controller), and ``$WFE_TOKEN`` an operator token (the bootstrap token when unset).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from wfe.engine.cli.render import print_json, print_table
from wfe.engine.errors import EngineError

Add = Callable[..., argparse.ArgumentParser]
MIB = 1024 * 1024


def cmd_pilots(args: argparse.Namespace) -> int:
    if args.action == "list":
        from wfe.engine.cli.main import _call

        rows = _call(args, "pilots.list", live=args.live, limit=args.limit)
        if args.json:
            print_json(rows)
        else:
            print_table(
                [
                    {
                        "pilot": r["id"],
                        "batch id": r["batch_id"] or "",
                        "agent": r["agent"],
                        "state": r["state"],
                        "end": r["end_state"] or "",
                        "exit": "" if r["exit_code"] is None else r["exit_code"],
                        "cpus": r["resources"].get("cpus", ""),
                        "reason": r["reason"] or "",
                    }
                    for r in rows
                ]
            )
        return 0
    return _run(args)


def _settings(args: argparse.Namespace) -> Any:
    from wfe.engine.cli.main import _config
    from wfe.engine.pilots.loop import FactorySettings, accounts_in
    from wfe.engine.pilots.model import Limits

    config = _config(args)
    if args.accounts is None:
        raise EngineError("--accounts DIR is required: one file per pilot XMPP account")
    accounts = Path(args.accounts).resolve()
    if not accounts.is_dir() or not accounts_in(accounts):
        raise EngineError(
            f"--accounts {args.accounts}: expected a directory of files named by each pilot"
            " account's JID (pilot-1@example.org), each holding its password"
        )
    if args.interval <= 0:
        raise EngineError(f"--interval must be positive, not {args.interval:g}")
    limits = Limits(
        max_pilots=args.max,
        site=args.site,
        tags=tuple(args.tag),
        cpus=args.cpus,
        max_cpus=args.max_cpus,
        memory=args.memory_mb * MIB,
        max_memory=args.max_memory_mb * MIB,
        walltime=args.walltime,
        idle_exit=args.idle_exit,
    )
    xmpp = config.xmpp
    controller = args.controller or xmpp.jid
    if not controller:
        raise EngineError("no controller JID: give --controller or set [xmpp] jid in wfe.toml")
    options = [
        "--server",
        args.server or xmpp.host or controller.rpartition("@")[2],
        "--port",
        str(args.port or xmpp.port),
        "--tls",
        args.tls or xmpp.tls,
        "--trusted-key",
        str(Path(args.trusted_key) if args.trusted_key else config.path(config.engine.public_key)),
        "--controller",
        controller,
    ]
    ca_file = args.ca_file or (config.path(xmpp.ca_file) if xmpp.ca_file else None)
    if ca_file:
        options += ["--ca-file", str(ca_file)]
    if args.heartbeat is not None:
        options += ["--heartbeat", f"{args.heartbeat:g}"]
    return FactorySettings(
        limits=limits,
        accounts=accounts,
        workdir=Path(args.workdir).resolve(),
        agent=(args.python, "-m", "wfe", "agent"),
        agent_options=tuple(options),
        interval=args.interval,
    ), config


def _run(args: argparse.Namespace) -> int:
    from wfe.engine.cli.client import ClientError, connect_config
    from wfe.engine.cli.works import GONE, RECONNECT_MAX
    from wfe.engine.pilots.loop import run_factory
    from wfe.engine.pilots.slurm import SlurmSubmitter

    settings, config = _settings(args)
    submitter = SlurmSubmitter(
        partition=args.partition, account=args.account, extra=args.sbatch_option
    )

    def report(line: str) -> None:
        print(f"wfe pilots: {line}", flush=True)

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        report("stopping (the pilots run on and end by themselves)")
                        stop.set()

            nursery.start_soon(on_signal)
            report(
                f"factory for up to {settings.limits.max_pilots} pilots at site"
                f" {settings.limits.site!r} ({submitter.system})"
            )
            delay = 1.0
            while not stop.is_set():
                try:
                    async with connect_config(config) as client:
                        delay = 1.0
                        await run_factory(
                            client,
                            submitter,
                            settings,
                            stop=stop,
                            rounds=1 if args.once else None,
                            report=report,
                        )
                    break
                except ClientError as exc:  # the engine went away: its books stay; adopt again
                    if exc.code not in GONE or args.once:
                        raise
                    report(f"{exc}; trying again in {delay:g} s")
                with trio.move_on_after(delay):
                    await stop.wait()
                delay = min(delay * 2, RECONNECT_MAX)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


def register(add: Add) -> None:
    """Add ``pilots`` to the ``wfe`` parser."""
    p = add(
        "pilots",
        cmd_pilots,
        "run a pilot factory: batch jobs (Slurm) whose payload is a short-lived `wfe agent`"
        " (`pilots list`: the pilots recorded)",
    )
    p.add_argument("action", nargs="?", choices=("run", "list"), default="run")
    p.add_argument("--accounts", metavar="DIR", help="one file per pilot XMPP account (its JID)")
    p.add_argument("--workdir", default="pilots", help="pilots' scripts, output, spools (shared)")
    p.add_argument("--max", type=int, default=10, help="live pilots at most (default 10)")
    p.add_argument("--site", default="local", help="the site the pilots' agents declare")
    p.add_argument("--tag", action="append", default=[], help="a tag the pilots offer (repeat)")
    p.add_argument("--cpus", type=int, default=1, help="slots per pilot, at least (default 1)")
    p.add_argument("--max-cpus", type=int, default=64, help="slots per pilot at most")
    p.add_argument("--memory-mb", type=int, default=1024, help="MiB per slot when jobs say none")
    p.add_argument("--max-memory-mb", type=int, default=65536, help="MiB per slot at most")
    p.add_argument("--walltime", type=float, default=3600.0, help="seconds a pilot lives at most")
    p.add_argument("--idle-exit", type=float, default=120.0, help="seconds idle before leaving")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between rounds")
    p.add_argument("--once", action="store_true", help="one round, then exit")
    p.add_argument("--partition", help="sbatch --partition")
    p.add_argument("--account", help="sbatch --account")
    p.add_argument(
        "--sbatch-option", action="append", default=[], help="another sbatch option (repeat)"
    )
    p.add_argument("--python", default=sys.executable, help="python on the batch nodes")
    x = p.add_argument_group("the pilots' XMPP settings (default: the engine's [xmpp])")
    x.add_argument("--server", help="XMPP server host")
    x.add_argument("--port", type=int, help="XMPP server port")
    x.add_argument("--tls", choices=("starttls", "plain"))
    x.add_argument("--ca-file")
    x.add_argument("--trusted-key", help="the engine's public key (default: its engine.pub)")
    x.add_argument("--controller", help="the engine's JID")
    x.add_argument("--heartbeat", type=float, help="the agents' heartbeat, seconds")
    p.add_argument("--live", action="store_true", help="list: only pilots not ended")
    p.add_argument("--limit", type=int, default=100, help="list: at most this many")
    p.add_argument("--json", action="store_true")
