"""``wfe`` commands for workflow requests, the catalog and products (registered through
``build_parser`` in ``wfe.engine.cli.main``). They talk to a running engine over its API.

    wfe submit FILE [--param k=v ...] [--namespace NS] [--priority P] [--user U] [--wait]
    wfe approve|pause|resume|cancel|archive ID
    wfe requests [--state S] [--json]          wfe request ID [--wait] [--json]
    wfe catalog add PATH... [--meta k=v ...] [--rse NAME]   wfe catalog ls [--json]
    wfe catalog replica add|ls|rm ...          (wfe.engine.cli.catalog)
    wfe products REQUEST [--json]              wfe provenance PRODUCT [--json]
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from wfe.engine.cli.catalog import register_catalog
from wfe.engine.cli.render import format_table, print_json, print_table
from wfe.engine.config import CONFIG_NAME, load_config

Add = Callable[..., argparse.ArgumentParser]

VERBS = {
    "approve": "approve a submitted request (when a person must: [approval] in wfe.toml, else the definition's policy)",
    "pause": "pause a running request: no new jobs are dispatched, running ones finish",
    "resume": "resume a paused request",
    "cancel": "cancel a request and kill its running jobs",
    "archive": "archive a completed, failed or cancelled request",
}
FINAL = ("completed", "failed", "cancelled", "archived")


def _call(args: argparse.Namespace, op: str, **call_args: Any) -> Any:
    from wfe.engine.cli.client import connect_config

    config = load_config(Path(args.config or os.environ.get("WFE_CONFIG") or CONFIG_NAME))

    async def go() -> Any:
        async with connect_config(config) as client:
            return await client.call(op, **call_args)

    return trio.run(go)


def _kv(pairs: list[str]) -> dict[str, Any]:
    from wfe.engine.cli.main import parse_params

    return parse_params(pairs)


def _print_json(data: Any) -> None:
    print_json(data)  # times as ISO 8601 strings


# --- requests ----------------------------------------------------------------------------------


def submission(
    file: str | os.PathLike[str],
    *,
    params: list[str] | None = None,
    user: str | None = None,
    namespace: str | None = None,
    priority: int | None = None,
    overlay: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The ``submit`` op's arguments for the definition in ``file``: the expanded
    definition (with the ``overlay`` testbed.toml applied, if given), its sources and git
    state, and the RScripts from ``rscripts/`` beside it.
    Blocking (file reads, git). Raises ``DefinitionError`` / ``SubmitError``."""
    from wfe.engine.definitions import load_definition, parse_assignments
    from wfe.engine.requests.scripts import bundle

    definition = load_definition(Path(file), overlay=overlay)
    git = definition.git
    payload: dict[str, Any] = {
        "expanded": definition.expanded,
        "sources": list(definition.sources),
        "git": None
        if git is None
        else {"commit": git.commit, "path": git.path, "dirty": git.dirty},
        "scripts": bundle(definition, file),
        "params": parse_assignments(params or []),
        "user": user or os.environ.get("USER") or getpass.getuser(),
    }
    if priority is not None:  # else the engine's default for the definition's type
        payload["priority"] = priority
    if namespace:
        payload["namespace"] = namespace
    return payload


def cmd_submit(args: argparse.Namespace) -> int:
    payload = submission(
        args.file,
        params=args.param,
        user=args.user,
        namespace=args.namespace,
        priority=args.priority,
        overlay=args.overlay,
    )
    for table in payload["expanded"].get("testbed", {}).get("unused", ()):
        print(
            f"warning: {args.overlay}: [{table}] matches no table of the definition",
            file=sys.stderr,
        )
    if args.update:
        keep = ("expanded", "sources", "git", "scripts")
        record = _call(args, "submit", update=args.update, **{k: payload[k] for k in keep})
        if args.json:
            _print_json(record)
        else:
            print(f"{record['id']} now runs definition {record['definition'][:12]}")
        return 0
    record = _call(args, "submit", **payload)
    for warning in record.get("warnings") or ():
        print(f"warning: {warning}", file=sys.stderr)
    if args.wait:
        record = _call(args, "request_wait", request=record["id"])
    if args.json:
        _print_json(record)
    elif not args.wait:
        print(record["id"])  # alone, so that R=$(wfe submit ...) holds just the id
    else:
        print(
            f"{record['id']} {record['state']}"
            + (f": {record['error']}" if record.get("error") else "")
        )
        for line in record.get("failures") or ():
            print(f"  {line}")
    return 0 if not args.wait or record["state"] == "completed" else 1


def _verb_command(verb: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        result = _call(args, verb, request=args.request)
        print(f"{result['request']}: {result['from']} -> {result['state']}")
        return 0

    return command


def cmd_requests(args: argparse.Namespace) -> int:
    rows = _call(
        args, "requests", limit=args.limit, **({"state": args.state} if args.state else {})
    )
    if args.json:
        _print_json(rows)
        return 0
    print_table(
        [
            {
                "request": r["id"],
                "state": r["state"],
                "namespace": r["namespace"],
                "inputs": f"{r['inputs_done']}/{r['inputs']}",
                "error": (r["error"] or "")[:60],
            }  # fmt: skip
            for r in rows
        ]
    )
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    if args.wait:
        _call(args, "request_wait", request=args.request)
    detail = _call(args, "request", request=args.request)
    if args.json:
        _print_json(detail)
    else:
        print(render_request(detail))
    return 0 if not args.wait or detail["state"] == "completed" else 1


def _approval(d: dict[str, Any]) -> list[str]:
    """Who approves the request, and the rule that decided it (when the history has it)."""
    if "approval_required" not in d:
        return []
    who = "by an operator" if d["approval_required"] else "by the engine"
    created: dict[str, Any] = next(
        (h for h in d.get("history") or () if h.get("kind") == "request.created"), {}
    )
    rule = (created.get("approval") or {}).get("rule")
    return [f"  approval {who}: {rule}" if rule else f"  approval {who}"]


def render_request(d: dict[str, Any]) -> str:
    """A request's detail for the terminal."""
    lines = [
        f"{d['id']}  {d['state']}  (workflow {d['workflow']}, user {d['user']}, namespace {d['namespace']},"
        f" priority {d['priority']})",
        f"  definition sha256 {d['definition']}",
        *_approval(d),
    ]
    if d.get("params"):
        lines.append("  params " + ", ".join(f"{k}={v!r}" for k, v in d["params"].items()))
    if d.get("error"):
        lines.append(f"  error: {d['error']}")
    lines += [f"  {f}" for f in d.get("failures") or ()]
    lines += [f"  {w}" for w in d.get("waiting") or ()]  # e.g. no replica near an agent
    if d.get("stages"):
        lines.append(
            format_table(
                [
                    {
                        "stage": s["name"],
                        "state": s["state"],
                        "inputs": ", ".join(f"{n} {k}" for k, n in sorted(s["inputs"].items()))
                        or "-",
                        "error": (s["error"] or "")[:70],
                    }  # fmt: skip
                    for s in d["stages"]
                ]
            )
        )
    if d.get("jobs"):
        lines.append(
            format_table(
                [
                    {
                        "job": j["job"],
                        "stage": j["stage"],
                        "batch": j["batch"],
                        "inputs": j["inputs"],
                        "state": j["state"] or j["batch_state"],
                        "outcome": j["outcome"],
                        "note": (j["stop"] or j["error"] or "")[:60],
                    }  # fmt: skip
                    for j in d["jobs"]
                ]
            )
        )
    lines += _splits(d.get("history") or ())
    if d.get("standing"):
        lines += _standing(d["standing"], d["id"], d.get("stale_products", 0))
    lines.append(f"  products: {d.get('products', 0)} (wfe products {d['id']})")
    return "\n".join(lines)


def _splits(history: Sequence[dict[str, Any]]) -> list[str]:
    """One line per job whose inputs were split for its retry (on_retry max_inputs)."""
    return [
        f"  split: job {h['job']} ({h['stage']}, batch {h['batch']}) after attempt"
        f" {h['attempt']} keeps {len(h['kept'])} input(s), {len(h['released'])} back to the"
        f" stage: {h.get('reason') or '-'}"
        for h in history
        if h.get("kind") == "request.split"
    ]


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    delta = at - now
    if abs(delta) < 0.5:
        return "now"
    return f"in {delta:.0f}s" if delta > 0 else f"{-delta:.0f}s ago"


def _standing(view: dict[str, Any], rid: str, stale: int) -> list[str]:
    """A standing request's stages: gap, cooldown, last and next round; stale products."""
    import time

    now = time.time()  # wall-clock: display only
    tick = f", next tick {_ago(view['next_tick'], now)}" if view.get("next_tick") else ""
    lines = [f"  standing: trigger {view['trigger']}{tick}"]
    lines.append(
        format_table(
            [
                {
                    "stage": s["stage"],
                    "gap": s["gap"],
                    "running": s["running"],
                    "cooldown": f"{s['cooldown']:g}s",
                    "last round": _ago(s["last_round"], now),
                    "next round": _ago(s["next_round"], now) if s["gap"] else "-",
                    "version": f"{s['version']} ({s['version_policy']})",
                }  # fmt: skip
                for s in view["stages"]
            ]
        )
    )
    lines.append(f"  stale products: {stale}" + (f" (wfe products {rid} --stale)" if stale else ""))
    return lines


# --- catalog and products -------------------------------------------------------------------------


def cmd_products(args: argparse.Namespace) -> int:
    rows = _call(args, "products", request=args.request, stale=args.stale)
    if args.json:
        _print_json(rows)
    else:
        print_table(
            [
                {
                    "product": p["id"],
                    "stage": p["stage"],
                    "type": p["type"],
                    "job": p["job"],
                    "size": p["size"],
                    "path": p["path"],
                    **({"stale": p["stale"]} if args.stale else {}),
                }  # fmt: skip
                for p in rows
            ]
        )
    return 0


def cmd_provenance(args: argparse.Namespace) -> int:
    from wfe.engine.requests.products import render_provenance

    chain = _call(args, "provenance", product=args.product)
    if args.format == "prov-json":
        from wfe.engine.requests.exports import prov_json

        print(prov_json(chain))
    elif args.json:
        _print_json(chain)
    else:
        print("\n".join(render_provenance(chain)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from wfe.engine.requests.exports import write_ro_crate

    record = _call(args, "request", request=args.request)
    products = _call(args, "products", request=args.request)
    chains = [_call(args, "provenance", product=p["id"]) for p in products]
    path = write_ro_crate(args.ro_crate, record, products, chains)
    print(f"{path}: {len(products)} products of {args.request}")
    return 0


def register(add: Add) -> None:
    """Add the request, catalog and product commands to the ``wfe`` parser."""
    p = add("submit", cmd_submit, "submit a workflow definition as a new request")
    p.add_argument("file", help="the definition (its RScripts are taken from rscripts/ beside it)")
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a request parameter",
    )
    p.add_argument("--namespace", help="run in this namespace instead of the definition's")
    p.add_argument(
        "--overlay",
        metavar="TESTBED_TOML",
        help="apply a testbed.toml: its [testbed] namespace and its configuration overrides",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="added to every stage's priority (default: its [workflow] type's in wfe.toml, or 0)",
    )
    p.add_argument("--user", help="submit as this user (default: $USER); part of the request id")
    p.add_argument(
        "--wait", action="store_true", help="wait until it ends; exit 1 unless completed"
    )
    p.add_argument(
        "--update",
        metavar="REQUEST",
        help="give this standing request the file as a new version of its definition",
    )
    p.add_argument("--json", action="store_true")

    for verb, text in VERBS.items():
        p = add(verb, _verb_command(verb), text)
        p.add_argument("request", metavar="ID")

    p = add("requests", cmd_requests, "list requests, newest first")
    p.add_argument("--state", help="only requests in this state")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")

    p = add("request", cmd_request, "show one request: state, stages, jobs, products")
    p.add_argument("request", metavar="ID")
    p.add_argument(
        "--wait", action="store_true", help="wait until it ends; exit 1 unless completed"
    )
    p.add_argument("--json", action="store_true")

    register_catalog(add, _call, _kv)  # wfe catalog (engine/cli/catalog.py)

    p = add("products", cmd_products, "list the products of a request")
    p.add_argument("request", metavar="REQUEST")
    p.add_argument("--stale", action="store_true", help="only products no longer current, and why")
    p.add_argument("--json", action="store_true")

    p = add("provenance", cmd_provenance, "show how a product was made, back to the raw inputs")
    p.add_argument("product", metavar="PRODUCT")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--format", choices=["text", "prov-json"], default="text", help="prov-json: W3C PROV"
    )

    p = add("export", cmd_export, "export a request's provenance as an RO-Crate")
    p.add_argument("request", metavar="REQUEST")
    p.add_argument(
        "--ro-crate", required=True, metavar="DIR", help="write the crate into this directory"
    )
