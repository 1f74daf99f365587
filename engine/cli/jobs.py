"""``wfe`` commands to find what can be run, repair and keep the books (registered through
``build_parser`` in ``wfe.engine.cli.main``):

    wfe actions [--json]            wfe rscripts [--json]
    wfe retry JOB [--json]          wfe rerun REQUEST [--json]
    wfe completion bash|zsh
    wfe backup DEST [--force] [--full-check] [--json]
    wfe purge --before DATE [--dry-run] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wfe.engine.cli.render import print_json, print_table, show
from wfe.engine.errors import EngineError

Add = Callable[..., argparse.ArgumentParser]


def _call(args: argparse.Namespace, op: str, **call_args: Any) -> Any:
    from wfe.engine.cli.main import _call as call

    return call(args, op, **call_args)


def _params(params: list[dict[str, Any]]) -> str:
    """Parameters on one line: ``name:type=default``, ``name:type!`` when required."""
    parts = []
    for p in params:
        text = f"{p['name']}:{p['type']}"
        if p.get("required"):
            text += "!"
        elif p.get("default") is not None:
            text += f"={json.dumps(p['default'])}"
        parts.append(text)
    return " ".join(parts) or "-"


def cmd_actions(args: argparse.Namespace) -> int:
    found = _call(args, "actions")
    if args.json:
        print_json(found)
    else:
        print_table(
            [
                {
                    "action": a["name"],
                    "params": _params(a["params"]),
                    "doc": a.get("error") or a["doc"],
                }
                for a in found
            ]
        )
    return 0


def cmd_rscripts(args: argparse.Namespace) -> int:
    found = _call(args, "rscripts")
    if args.json:
        print_json(found)
    else:
        print_table(
            [
                {
                    "rscript": s["name"],
                    "version": s["version"],
                    "params": _params(s["params"]),
                    "doc": s["doc"],
                }
                for s in found
            ]
        )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    done = _call(args, "retry", job=args.job)
    if args.json:
        print_json(done)
    else:
        again = [j for j in done["reset"] if j != done["job"]]
        print(done["job"] + (f" (and {len(again)} job(s) of its tree)" if again else ""))
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    done = _call(args, "rerun", request=args.request)
    if args.json:
        print_json(done)
    else:
        print(done["request"])  # alone, like `wfe submit`
        print(f"{len(done['inputs'])} failed input(s) of {done['of']} run again", file=sys.stderr)
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from wfe.engine.cli.main import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from wfe.engine.cli.main import _config
    from wfe.engine.repository.backup import backup

    config = _config(args)
    report = backup(
        config.repository_path, Path(args.dest), force=args.force, full_check=args.full_check
    )
    if args.json:
        print_json(
            {
                "path": report.path,
                "bytes": report.bytes,
                "last_event": report.last_event,
                "seconds": report.seconds,
                "check": report.check,
            }
        )
    else:
        print(
            f"wrote {report.path}: {report.bytes} bytes, events up to {report.last_event},"
            f" {report.check} ({report.seconds:.2f} s)"
        )
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from wfe.engine.cli.watch import parse_since

    before = parse_since(args.before)
    if before > time.time():  # wall-clock: a date the operator gave
        raise EngineError(f"--before {args.before!r} is in the future")
    done = _call(args, "purge", before=before, dry_run=args.dry_run)
    if args.json:
        print_json(done)
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(
            f"{verb}: {show(done['jobs'])} job(s) in {done['roots']} tree(s):"
            f" {done['events']} event(s), {done['output_chunks']} output chunk(s)"
            f" ({done['output_bytes']} bytes)"
        )
    return 0


def register(add: Add) -> None:
    """Add actions, rscripts, retry, completion, backup and purge to the ``wfe`` parser."""
    p = add("actions", cmd_actions, "list the actions the engine can run, with their parameters")
    p.add_argument("--json", action="store_true")
    p = add("rscripts", cmd_rscripts, "list the RScripts the engine can run, with their parameters")
    p.add_argument("--json", action="store_true")

    p = add("retry", cmd_retry, "run a failed or cancelled root job again (recorded as an event)")
    p.add_argument("job")
    p.add_argument("--json", action="store_true")

    p = add(
        "rerun",
        cmd_rerun,
        "run a request's failed inputs again as a new request (recorded on both)",
    )
    p.add_argument("request", metavar="REQUEST")
    p.add_argument("--json", action="store_true")

    p = add(
        "completion",
        cmd_completion,
        "print a shell completion script: wfe completion bash > /etc/bash_completion.d/wfe",
        config=False,
    )
    p.add_argument("shell", choices=("bash", "zsh"))

    p = add(
        "backup",
        cmd_backup,
        "write a consistent copy of the repository to DEST, also while the engine runs",
    )
    p.add_argument("dest", metavar="DEST", help="the file to write (not an existing one)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.add_argument(
        "--full-check",
        action="store_true",
        help="check the copy with PRAGMA integrity_check (default: quick_check)",
    )
    p.add_argument("--json", action="store_true")

    p = add(
        "purge",
        cmd_purge,
        "delete the output and events of jobs that ended before a date (admin; recorded)",
    )
    p.add_argument(
        "--before",
        required=True,
        metavar="DATE",
        help="an ISO date or time (2026-01-31) or an age (90d): jobs that ended before it",
    )
    p.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    p.add_argument("--json", action="store_true")
