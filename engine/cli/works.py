"""``wfe work``: the work queue from the command line (registered through ``build_parser``
in ``wfe.engine.cli.main``)::

    wfe work run PIPELINE [module.function] [--lives N] [--sleep S] [--site S] [--tags T] [--event N]
    wfe work deposit PIPELINE [-p KEY=VALUE]... [--priority N] [--count N] [--file works.json] [--json]
    wfe work ls [PIPELINE] [--status S] [--tags T] ... [--limit N] [--offset N] [--json]
    wfe work show ID [--json]          wfe work count [PIPELINE] [filters] [--json]
    wfe work withdraw PIPELINE [--json]
    wfe work update ID --attempt N [--status S] [--results JSON] [--products P]... [--json]
    wfe work cancel ID                 wfe work delete ID...

``wfe work run`` is the pull worker (``wfe.engine.works.worker``): a ``worker`` token in
``$WFE_TOKEN`` is all it needs. SIGTERM or Ctrl-C lets the current work finish first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from wfe.engine.cli.render import local_time, print_json, print_table, show
from wfe.engine.errors import EngineError

Add = Callable[..., argparse.ArgumentParser]
STATUSES = ("queued", "running", "success", "failure", "cancelled")


def _call(args: argparse.Namespace, op: str, **call_args: Any) -> Any:
    from wfe.engine.cli.main import _call as call

    return call(args, op, **call_args)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    from wfe.engine.cli.watch import parse_since

    found: dict[str, Any] = {}
    for key in ("site", "event", "user", "group", "parent", "priority"):
        value = getattr(args, key, None)
        if value is not None:
            found[key] = value
    if getattr(args, "tags", None):
        found["tags"] = args.tags
    if getattr(args, "status", None):
        found["status"] = args.status
    if getattr(args, "since", None):
        found["since"] = parse_since(args.since)
    return found


def _row(work: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": work["id"],
        "pipeline": work["pipeline"],
        "status": work["status"],
        "priority": work["priority"],
        "attempt": work["attempt"],
        "site": work["site"],
        "tags": show(work["tags"]),
        "created": local_time(work["creation"]),
        "results": show(work["results"])[:40],
    }


def _print_work(work: dict[str, Any] | None, as_json: bool) -> None:
    if as_json:
        print_json(work)
    elif work is None:
        print("no work")
    else:
        for key, value in work.items():
            shown = local_time(value) if key in ("creation", "start", "stop") else show(value)
            print(f"{key:>11}  {shown}")


# --- commands ------------------------------------------------------------------------------


def cmd_deposit(args: argparse.Namespace) -> int:
    from wfe.engine.cli.main import parse_params
    from wfe.engine.works.model import WorkError, parse_work, payload

    if args.file:
        works = json.loads(Path(args.file).read_text())
        if not isinstance(works, list):
            raise EngineError(f"{args.file}: expected a JSON array of works")
    elif not args.pipeline:
        raise EngineError("give a PIPELINE (or --file with a JSON array of works)")
    else:
        work: dict[str, Any] = {"pipeline": args.pipeline, "parameters": parse_params(args.param)}
        for key in ("priority", "timeout", "retries", "site", "user", "function", "command"):
            if getattr(args, key) is not None:
                work[key] = getattr(args, key)
        if args.tags:
            work["tags"] = args.tags
        if args.event is not None:
            work["event"] = [args.event]
        works = [work] * args.count
    for i, data in enumerate(works):  # a bad work fails here, before connecting
        try:
            parse_work(data)
        except WorkError as exc:
            raise WorkError(f"works[{i}].{exc}" if len(works) > 1 else str(exc)) from None
    clean = [{k: v for k, v in payload(parse_work(w)).items() if k != "id"} for w in works]
    ids = _call(args, "work.deposit", works=clean)["ids"]
    if args.json:
        print_json(ids)
    else:
        print("\n".join(ids))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    extra = {"pipeline": args.pipeline} if args.pipeline else {}
    found = _call(
        args, "work.find", limit=args.limit, offset=args.offset, **extra, **_filters(args)
    )
    if args.json:
        print_json(found)
        return 0
    print_table([_row(w) for w in found["works"]])
    shown = len(found["works"])
    if found["count"] > shown:
        print(f"{shown} of {found['count']} (--offset {args.offset + shown} for more)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _print_work(_call(args, "work.get", id=args.id), args.json)
    if not args.json:
        for f in _call(args, "work.files", id=args.id):
            where = f["archived"] or f"not archived: {f['reason']}"
            print(f"{f['kind']:>11}  {f['source']} -> {where}")
    return 0


def cmd_count(args: argparse.Namespace) -> int:
    extra = {"pipeline": args.pipeline} if args.pipeline else {}
    count = _call(args, "work.count", **extra, **_filters(args))["count"]
    print_json(count) if args.json else print(count)
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    work = _call(args, "work.withdraw", pipeline=args.pipeline, **_filters(args))["work"]
    _print_work(work, args.json)
    return 0 if work is not None else 3


def cmd_update(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.status:
        changes["status"] = args.status
    if args.results is not None:
        try:
            changes["results"] = json.loads(args.results)
        except ValueError:
            raise EngineError(f"--results: not JSON: {args.results[:60]!r}") from None
    if args.products:
        changes["products"] = args.products
    if args.plots:
        changes["plots"] = args.plots
    stored = _call(args, "work.update", id=args.id, attempt=args.attempt, **changes)
    _print_work(stored, args.json)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    stored = _call(args, "work.cancel", id=args.id)
    print(f"{stored['id']}: {stored['status']}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    deleted = _call(args, "work.delete", ids=args.ids)["deleted"]
    print(f"deleted {len(deleted)} work(s)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from wfe.engine.cli.main import _config
    from wfe.engine.works.worker import Performed, WorkerSpec

    if args.function is not None:
        module, _, name = args.function.rpartition(".")
        if not module or not name:
            raise EngineError(f"{args.function!r} is not module.function (e.g. mymodule.add)")
        sys.path.insert(0, "")
        if importlib.util.find_spec(module) is None:
            raise EngineError(f"no module named {module!r} here (is it on PYTHONPATH?)")
    if args.lives is not None and args.lives < 1:
        raise EngineError(f"--lives must be at least 1, not {args.lives}")
    if args.sleep < 0:
        raise EngineError(f"--sleep must not be negative, not {args.sleep}")
    spec = WorkerSpec(
        pipeline=args.pipeline,
        function=args.function,
        lives=args.lives,
        sleep=args.sleep,
        filters=_filters(args),
    )
    config = _config(args)

    def report(done: Performed) -> None:
        if args.json:
            print(json.dumps(attrs.asdict(done)))
        else:
            why = f" ({done.error})" if done.error else ""
            print(f"{done.id} attempt {done.attempt}: {done.status} in {done.seconds:.2f} s{why}")
        sys.stdout.flush()

    trio.run(_serve, config, spec, report)
    return 0


#: ClientError codes that mean the engine went away (not a refusal): the worker reconnects.
GONE = frozenset({"", "closed", "timeout"})
RECONNECT_MAX = 30.0  # seconds: the longest wait between two tries to reach the engine


async def _serve(config: Any, spec: Any, report: Callable[[Any], None]) -> None:
    """Run the worker, reconnecting (1 s doubling to 30 s) whenever the engine goes away: a
    restarted engine gives running works a full lease, and a work whose update was lost with
    the connection runs again once that lease ends."""
    from wfe.engine.cli.client import ClientError, connect_config
    from wfe.engine.works.worker import run_worker

    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    print("wfe work run: stopping after the current work", file=sys.stderr)
                    stop.set()

        nursery.start_soon(on_signal)
        done = 0

        def counted(performed: Any) -> None:
            nonlocal done
            done += 1
            report(performed)

        delay = 1.0
        while not stop.is_set():
            left = None if spec.lives is None else spec.lives - done
            if left is not None and left <= 0:
                break
            try:
                async with connect_config(config) as client:
                    delay = 1.0
                    await run_worker(client, attrs.evolve(spec, lives=left), stop, counted)
                break
            except ClientError as exc:
                if exc.code not in GONE:
                    raise
                print(f"wfe work run: {exc}; trying again in {delay:g} s", file=sys.stderr)
            with trio.move_on_after(delay):
                await stop.wait()
            delay = min(delay * 2, RECONNECT_MAX)
        nursery.cancel_scope.cancel()


# --- the parser --------------------------------------------------------------------------------


def register(add: Add) -> None:
    """Add ``wfe work`` and its subcommands to the ``wfe`` parser."""
    work = add(
        "work", _no_subcommand, "the work queue: deposit, withdraw, update, search; run a worker"
    )
    sub = work.add_subparsers(dest="work_command", metavar="SUBCOMMAND")

    def command(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", default=argparse.SUPPRESS, help="path of wfe.toml")
        p.set_defaults(fn=fn)
        return p

    def filters(p: argparse.ArgumentParser, *, status: bool = False) -> None:
        p.add_argument("--site", help="only works for this site")
        p.add_argument(
            "--tags",
            action="append",
            default=[],
            help="only works with this tag (repeat: all of them)",
        )
        p.add_argument("--event", type=int, help="only works of this event number")
        p.add_argument("--user", help="only works of this user")
        p.add_argument("--parent", help="only works a job's tasklets deposited (ctx.work)")
        p.add_argument(
            "--priority",
            type=int,
            choices=range(1, 6),
            help="only works of this priority (5 highest)",
        )
        if status:
            p.add_argument(
                "--status", action="append", default=[], choices=STATUSES, help="repeat for several"
            )
            p.add_argument("--group", help="only works of this group")
            p.add_argument(
                "--since", help="created since: an ISO date or time, or an age (30m, 2h, 7d)"
            )

    p = command(
        "run",
        cmd_run,
        "a pull worker: withdraw a work, call the function with its parameters, update it; repeat",
    )
    p.add_argument("pipeline", metavar="PIPELINE")
    p.add_argument(
        "function",
        nargs="?",
        metavar="module.function",
        help="the function to call (default: each work's own function or command)",
    )
    p.add_argument("--lives", type=int, help="works to perform before exiting (default: for ever)")
    p.add_argument(
        "--sleep",
        type=float,
        default=5.0,
        help="seconds to wait when the bucket is empty (default: 5)",
    )
    p.add_argument("--json", action="store_true", help="one JSON line per work performed")
    filters(p)

    p = command("deposit", cmd_deposit, "queue works; print their ids")
    p.add_argument("pipeline", nargs="?", metavar="PIPELINE")
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter (a JSON value, or text)",
    )
    p.add_argument("--priority", type=int, help="1..5, 5 highest (default: 3)")
    p.add_argument("--timeout", type=int, help="seconds (default: 3600)")
    p.add_argument("--retries", type=int, help="default: 2")
    p.add_argument("--site")
    p.add_argument("--user")
    p.add_argument("--tags", action="append", default=[])
    p.add_argument("--event", type=int)
    p.add_argument("--function", help="module.function a worker runs")
    p.add_argument("--command", help="a shell command a worker runs instead")
    p.add_argument("--count", type=int, default=1, help="this many copies (default: 1)")
    p.add_argument("--file", help="a JSON array of work payloads instead of the options")
    p.add_argument("--json", action="store_true")

    p = command("ls", cmd_ls, "list works, newest first")
    p.add_argument("pipeline", nargs="?", metavar="PIPELINE")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--json", action="store_true")
    filters(p, status=True)

    p = command("count", cmd_count, "count works")
    p.add_argument("pipeline", nargs="?", metavar="PIPELINE")
    p.add_argument("--json", action="store_true")
    filters(p, status=True)

    p = command("show", cmd_show, "one work in full")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true")

    p = command("withdraw", cmd_withdraw, "take one work by hand (exit 3 when the bucket is empty)")
    p.add_argument("pipeline", metavar="PIPELINE")
    p.add_argument("--json", action="store_true")
    filters(p)

    p = command("update", cmd_update, "record a withdrawn work's results and status")
    p.add_argument("id", metavar="ID")
    p.add_argument("--attempt", type=int, required=True)
    p.add_argument("--status", choices=("running", "success", "failure"))
    p.add_argument("--results", help="JSON")
    p.add_argument("--products", action="append", default=[])
    p.add_argument("--plots", action="append", default=[])
    p.add_argument("--json", action="store_true")

    p = command("cancel", cmd_cancel, "take a queued or running work out of its bucket (operator)")
    p.add_argument("id", metavar="ID")

    p = command("delete", cmd_delete, "delete works (operator)")
    p.add_argument("ids", nargs="+", metavar="ID")


def _no_subcommand(args: argparse.Namespace) -> int:
    raise EngineError(
        "wfe work needs a subcommand: run, deposit, ls, show, count, withdraw, update, cancel, delete"
    )
