"""``wfe token create|revoke|list`` and ``wfe console``: registered by ``wfe.engine.cli.main.build_parser``.

Token commands talk to the running engine (the repository has one writer) with the token
in ``$WFE_TOKEN`` or, by default, the bootstrap token file of ``wfe init``; they need an
admin token. ``wfe console`` opens the interactive terminal console; ``--url`` prints the
address of the web page instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from wfe.engine.cli.render import print_json, print_table


def _config(args: argparse.Namespace) -> Any:
    from wfe.engine.cli.main import _config as load

    return load(args)


def _call(args: argparse.Namespace, op: str, **call_args: Any) -> Any:
    from wfe.engine.cli.main import _call as call

    return call(args, op, **call_args)


def cmd_token_create(args: argparse.Namespace) -> int:
    made = _call(args, "token.create", name=args.name, role=args.role)
    if args.json:
        print_json(made)
    else:
        print(made["token"])
        print(
            f"token {made['name']!r} ({made['role']}): shown this once; give it to its user,"
            " who sets WFE_TOKEN or enters it in the web page",
            file=sys.stderr,
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    done = _call(args, "token.revoke", name=args.name)
    if args.json:
        print_json(done)
    else:
        print(
            f"revoked {done['name']!r} ({done['role']}); closed {done['closed_connections']} connection(s)"
        )
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    listed = _call(args, "token.list", revoked=args.all)
    if args.json:
        print_json(listed)
    else:
        print_table(
            [
                {
                    "name": t["name"],
                    "role": t["role"],
                    "created_by": t["created_by"],
                    "revoked_by": t["revoked_by"] or "",
                }
                for t in listed
            ]
        )
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    from wfe.engine.cli.client import client_token, engine_url

    config = _config(args)
    url = engine_url(config)
    if args.url:
        print(url.replace("ws://", "http://", 1))
        return 0
    from wfe.engine.console.tui import run_console

    return run_console(url, client_token(config))


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``token`` (with create, revoke, list) and ``console`` to the ``wfe`` parser."""
    token = add("token", cmd_token_list, "manage console tokens (admin): create, revoke, list")
    sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    def action(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", default=argparse.SUPPRESS, help="path of wfe.toml")
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=fn)
        return p

    p = action("create", cmd_token_create, "create a token and print its secret (shown once)")
    p.add_argument("--name", required=True, help="who or what uses it, e.g. alice or ci")
    p.add_argument("--role", required=True, choices=("viewer", "operator", "admin", "worker"))
    p = action("revoke", cmd_token_revoke, "revoke a token; its open connections are closed")
    p.add_argument("name")
    p = action("list", cmd_token_list, "list tokens (never their secrets)")
    p.add_argument("--all", action="store_true", help="include revoked tokens")

    p = add("console", cmd_console, "the interactive terminal console (keys: ? for help)")
    p.add_argument(
        "--url", action="store_true", help="print the address of the web console and exit"
    )
