"""``wfe agents``: the agents the engine knows, and ``wfe agents up|down [GROUP]`` for the
groups of local agents (``[agents.<name>]``). Registered by ``build_parser`` in
``wfe.engine.cli.main``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from wfe.engine.cli.render import print_json, print_table

Add = Callable[..., argparse.ArgumentParser]


def _call(args: argparse.Namespace, op: str, **call_args: Any) -> Any:
    from wfe.engine.cli.main import _call as call

    return call(args, op, **call_args)


def cmd_agents(args: argparse.Namespace) -> int:
    if args.action is not None:
        options = {} if args.group is None else {"group": args.group}
        result = _call(args, f"agents.{args.action}", **options)
        if args.json:
            print_json(result)
        else:
            done = result["started" if args.action == "up" else "stopped"]
            verb = "started" if args.action == "up" else "stopped"
            print(f"{verb}: {', '.join(done)}" if done else f"nothing to do: no agent {verb}")
        return 0
    agents = _call(args, "agents")
    if args.json:
        print_json(agents)
    else:
        print_table(
            [
                {
                    "agent": a["name"],
                    "group": a.get("group") or "",
                    "state": a["state"],
                    "transport": a["transport"],
                    "slots": f"{a['slots'] - a['free_slots']}/{a['slots']}",
                    "site": a["site"],
                    "running": " ".join(a["running"][:4])
                    + (" ..." if len(a["running"]) > 4 else ""),
                }
                for a in agents
            ]
        )
    return 0


def register(add: Add) -> None:
    """Add ``agents`` to the ``wfe`` parser."""
    p = add(
        "agents",
        cmd_agents,
        "list the agents the engine knows; `agents up|down [GROUP]` starts or stops local groups",
    )
    p.add_argument("action", nargs="?", choices=("up", "down"), help="start or stop a group")
    p.add_argument("group", nargs="?", help="the [agents.<group>] to start or stop (default: all)")
    p.add_argument("--json", action="store_true")
