"""``wfe catalog``: the files requests can process, and where their replicas are.

    wfe catalog add PATH... [--meta k=v ...] [--rse NAME]    wfe catalog ls [--json]
    wfe catalog replica add PATH RSE LOCATION                wfe catalog replica rm PATH RSE
    wfe catalog replica ls [PATH] [--json]

``--rse NAME`` records each path as its entry's replica at storage element NAME as well. A
replica's location is a path or URL on its storage element; a job at a site near it reads
that location (docs/definitions.md, "Replicas and distances"). Registered by
``wfe.engine.cli.requests``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wfe.engine.cli.render import print_json, print_table
from wfe.engine.config import CONFIG_NAME
from wfe.engine.errors import EngineError

Call = Callable[..., Any]


def cmd_catalog_add(args: argparse.Namespace, call: Call, kv: Callable[[list[str]], Any]) -> int:
    paths = [str(Path(p).resolve()) for p in args.paths]
    extra = {"rse": args.rse} if args.rse else {}
    entries = call(args, "catalog_add", paths=paths, metadata=kv(args.meta), **extra)
    if args.json:
        print_json(entries)
    else:
        added = sum(1 for e in entries if e["new"])
        at = f", replicas at {args.rse}" if args.rse else ""
        print(
            f"catalogued {len(entries)} file(s): {added} new, {len(entries) - added} refreshed{at}"
        )
    return 0


def cmd_catalog_ls(args: argparse.Namespace, call: Call) -> int:
    entries = call(args, "catalog_ls")
    if args.json:
        print_json(entries)
    else:
        print_table(
            [
                {
                    "path": e["path"],
                    "size": e["size"],
                    "sha256": e["sha256"][:12],
                    "metadata": json.dumps(e["metadata"], sort_keys=True)[:70],
                }  # fmt: skip
                for e in entries
            ]
        )
    return 0


def cmd_replica(args: argparse.Namespace, call: Call) -> int:
    path = str(Path(args.path).resolve()) if args.path else None
    if args.replica_command == "add":
        call(args, "replica_add", path=path, rse=args.rse, location=args.location)
        print(f"{path}: replica at {args.rse}: {args.location}")
    elif args.replica_command == "rm":
        call(args, "replica_rm", path=path, rse=args.rse)
        print(f"{path}: no longer a replica at {args.rse}")
    else:
        rows = call(args, "replica_ls", **({"path": path} if path else {}))
        if args.json:
            print_json(rows)
        else:
            print_table(rows)
    return 0


def register_catalog(
    add: Callable[..., argparse.ArgumentParser], call: Call, kv: Callable[[list[str]], Any]
) -> None:
    """Add ``wfe catalog`` and its subcommands; ``call`` runs an op on the engine."""

    def needs_subcommand(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
        def fn(_args: argparse.Namespace) -> int:
            raise EngineError(parser.format_usage().strip())

        return fn

    p = add("catalog", None, "register input files and their replicas, or list them")
    p.set_defaults(fn=needs_subcommand(p))
    sub = p.add_subparsers(dest="catalog_command", metavar="add|ls|replica", required=True)
    q = sub.add_parser("add", help="register files with their size, sha256 and metadata")
    q.add_argument(
        "paths", nargs="+", metavar="PATH", help="files (a PATH.meta.json sidecar gives metadata)"
    )
    q.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata (JSON or text)"
    )
    q.add_argument("--rse", metavar="NAME", help="the storage element these paths are on")
    q.set_defaults(fn=lambda args: cmd_catalog_add(args, call, kv))
    q = sub.add_parser("ls", help="list the catalog")
    q.set_defaults(fn=lambda args: cmd_catalog_ls(args, call))
    r = sub.add_parser("replica", help="add, list or remove replicas of catalog entries")
    r.set_defaults(fn=needs_subcommand(r))
    rsub = r.add_subparsers(dest="replica_command", metavar="add|ls|rm", required=True)
    q = rsub.add_parser("add", help="record a copy of an entry on a storage element")
    q.add_argument("path", metavar="PATH", help="the catalog entry's path")
    q.add_argument("rse", metavar="RSE", help="the storage element's name")
    q.add_argument("location", metavar="LOCATION", help="the path or URL of the copy there")
    q = rsub.add_parser("rm", help="forget the copy of an entry on a storage element")
    q.add_argument("path", metavar="PATH")
    q.add_argument("rse", metavar="RSE")
    q = rsub.add_parser("ls", help="list replicas (of one entry, or of all)")
    q.add_argument("path", metavar="PATH", nargs="?")
    for q in rsub.choices.values():
        q.set_defaults(fn=lambda args: cmd_replica(args, call))
    for q in (sub.choices["add"], sub.choices["ls"], *rsub.choices.values()):
        q.add_argument("--json", action="store_true")
        q.add_argument("--config", default=argparse.SUPPRESS, help=f"path of {CONFIG_NAME}")
