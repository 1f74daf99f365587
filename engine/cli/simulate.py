"""``wfe simulate FILE``: run a definition's workflow action on a simulation clock in the
running engine, and follow it to its end; ``wfe status EXECUTION_ID`` shows one.

    wfe simulate FILE [--realtime] [--until SECONDS] [-p k=v ...] [--overlay testbed.toml]

Like ``wfe submit``, the definition is read here (includes, overlay) and sent to the engine
over its console, which records the execution (the engine's repository is the one writer)
and runs it. Exit 0 once the execution has completed; otherwise 1 with a one-line reason.
Registered through ``build_parser`` in ``wfe.engine.cli.main``.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import trio

from wfe.engine.cli.render import print_json, print_table
from wfe.engine.errors import EngineError

Add = Callable[..., argparse.ArgumentParser]

#: Message fields shown in a story line, in this order, when the message has them.
SHOWN = ("run_id", "sequence", "slice", "filename", "state", "substate")


def parse_until(text: str | None) -> float | None:
    """``--until`` as seconds of simulation. Raises ``EngineError`` unless positive."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise EngineError(f"--until {text}: expected a positive number of seconds")
    return value


def cmd_simulate(args: argparse.Namespace) -> int:
    from wfe.engine.cli.client import ClientError, connect_config
    from wfe.engine.cli.main import _config
    from wfe.engine.cli.params import split_pairs, typed_params
    from wfe.engine.definitions import load_definition
    from wfe.engine.simulate import workflow_action

    until = parse_until(args.until)
    split_pairs(args.param)  # a malformed pair fails before anything is read or sent
    definition = load_definition(args.file, overlay=args.overlay)
    action = workflow_action(definition)
    git = definition.git
    payload: dict[str, Any] = {
        "expanded": definition.expanded,
        "sources": list(definition.sources),
        "git": None if git is None else {"commit": git.commit, "path": git.path, "dirty": git.dirty},
        "user": args.user or os.environ.get("USER") or getpass.getuser(),
        "realtime": args.realtime,
        **({"until": until} if until is not None else {}),
    }  # fmt: skip
    config = _config(args)

    async def go() -> dict[str, Any]:
        async with connect_config(config) as client:
            try:
                listed = await client.call("actions", name=action)
            except ClientError as exc:  # the simulate op names the unknown workflow action
                if exc.code != "not_found":
                    raise
                listed = []
            declared = listed[0]["params"] if listed else []
            params = typed_params(args.param, declared, target=action)
            record = await client.call("simulate", params=params, **payload)
            if args.json:
                done: dict[str, Any] = await client.call("execution_wait", execution=record["id"])
                return done
            mode = "real time" if args.realtime else "fast"
            print(f"{record['id']}: {action} ({mode})", flush=True)
            if args.quiet:
                return await client.call("execution_wait", execution=record["id"])  # type: ignore[no-any-return]
            return await follow(client, record["id"], write=functools.partial(print, flush=True))

    detail = trio.run(go)
    if args.json:
        print_json(detail)
    else:
        print_execution(detail, story=False)
    if detail["state"] != "completed":
        print(f"wfe: error: {detail['id']} {detail['state']}: {detail['error']}", file=sys.stderr)
        return 1
    return 0


async def follow(client: Any, eid: str, *, write: Callable[[str], object]) -> dict[str, Any]:
    """Write the execution's story as it is recorded, one line per event, until it has
    ended; return its detail. Raises ``ClientError`` when the engine closes the connection."""
    from wfe.engine.cli.client import ClientError

    await client.call("subscribe", subjects=[eid], compress=True)
    frames = client.frames()  # subscribed before the history is read: nothing falls between
    seen = 0

    async def catch_up() -> dict[str, Any]:
        nonlocal seen
        detail: dict[str, Any] = await client.call("execution", execution=eid)
        for event in detail["story"]:
            if event["id"] > seen:
                write(story_line(event))
                seen = event["id"]
        if detail["state"] == "running" and any(
            e["kind"] == "execution.ended" for e in detail["story"]
        ):  # it ended between reading the record and its story: its end is committed now
            detail = await client.call("execution", execution=eid)
        return detail

    detail = await catch_up()
    while detail["state"] == "running":
        try:
            frame = await frames.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            reason = client.closed or "closed"
            raise ClientError(f"the engine closed the connection: {reason}", "closed") from None
        if "missed" in frame:  # the stream dropped some: read them from the story
            detail = await catch_up()
            continue
        for event in frame.get("events", ()):
            if event["subject"] != eid or event["id"] <= seen:
                continue
            write(story_line(event))
            seen = event["id"]
            if event["kind"] == "execution.ended":
                detail = await catch_up()
    return detail


def story_line(event: dict[str, Any]) -> str:
    """One event of an execution's story as a line: simulation time, event, detail."""
    row = _story_row(event)
    return f"{row['sim']:>9}  {row['event']:<24} {row['detail']}".rstrip()


def status_of_id(args: argparse.Namespace) -> int | None:
    """``wfe status ID`` for an execution (``--json`` too; ``--watch``: its story as it goes,
    until it ends); None when no execution has that id (it is a request's, shown by the
    caller)."""
    from wfe.engine.cli.client import ClientError, connect_config
    from wfe.engine.cli.main import _config

    config = _config(args)

    async def go() -> dict[str, Any] | None:
        async with connect_config(config) as client:
            try:
                detail: dict[str, Any] = await client.call("execution", execution=args.job)
            except ClientError as exc:
                if exc.code == "not_found":
                    return None
                raise
            if args.watch and detail["state"] == "running":  # the story as it goes
                return await follow(client, args.job, write=print)
            return detail

    detail = trio.run(go)
    if detail is None:
        return None
    if args.json:
        print_json(detail)
    else:
        print_execution(detail, story=not args.watch)
    return 0


def print_execution(d: dict[str, Any], *, story: bool) -> None:
    """An execution for people: its record, figures, and (with ``story``) its events with
    their simulation times."""
    until = f", until {d['until']:g} s" if d.get("until") is not None else ""
    print(
        f"{d['id']}  {d['state']}  ({d['mode']}{until}; workflow {d['workflow']}, "
        f"action {d['action']}, namespace {d['namespace']}, job {d['job'] or '-'})"
    )
    if d.get("error"):
        print(f"  error: {d['error']}")
    if d.get("params"):
        print("  params: " + ", ".join(f"{k}={v}" for k, v in d["params"].items()))
    figures = d.get("figures")
    if figures:
        ratio = figures.get("ratio")
        print(
            f"  simulated {figures['simulated_seconds']:g} s in {figures['wall_seconds']:.3f} s"
            f" of wall time" + (f" (x{ratio:g})" if ratio else "")
        )
        messages = figures.get("messages") or {}
        print(
            f"  messages {figures.get('messages_total', 0)}: "
            + (", ".join(f"{k} {v}" for k, v in messages.items()) or "none")
        )
        states = figures.get("states") or {}
        if states:
            print("  seconds per state: " + ", ".join(f"{k} {v:g}" for k, v in states.items()))
        if figures.get("metrics"):
            print("  metrics: " + ", ".join(f"{k} {v}" for k, v in figures["metrics"].items()))
    if story:
        print_table([_story_row(e) for e in d.get("story") or ()])


def _story_row(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data") or {}
    sim = data.get("sim_time")
    kind = str(event["kind"])
    if kind.startswith("broadcast."):
        message = data.get("message") or {}
        what = " ".join(f"{k}={message[k]}" for k in SHOWN if k in message)
        kind = f"broadcast {data.get('topic', kind.removeprefix('broadcast.'))}"
    elif kind == "execution.state":
        what = data.get("state", "") + (f"/{data['substate']}" if data.get("substate") else "")
    elif kind == "execution.ended":
        what = str(data.get("state", "")) + (f": {data['error']}" if data.get("error") else "")
    else:
        what = ""
    return {"sim": "-" if sim is None else f"{sim:g}", "event": kind, "detail": what}


def register(add: Add) -> None:
    """Add ``simulate`` to the ``wfe`` parser."""
    p = add(
        "simulate",
        cmd_simulate,
        "run a definition's workflow action on a simulation clock (fast, or --realtime) and"
        " follow it to its end",
    )
    p.add_argument("file", help="the workflow definition (TOML)")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="tie simulation time to the wall clock (catching up when behind)",
    )
    p.add_argument("--until", metavar="SECONDS", help="stop the simulation at this simulation time")
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the workflow action, over the definition's configuration",
    )
    p.add_argument(
        "--overlay", metavar="TESTBED_TOML", help="apply a testbed.toml, as `wfe submit` does"
    )
    p.add_argument("--user", help="the user in the execution id (default: $USER)")
    p.add_argument(
        "--quiet", "-q", action="store_true", help="the summary only, not the story as it goes"
    )
    p.add_argument("--json", action="store_true", help="the execution's detail as JSON")
