"""``wfe status --watch`` and ``wfe logs``: views that follow the engine instead of polling it.

``watch_status`` subscribes to the engine's committed events and redraws after a change, at
most ``REDRAW_INTERVAL`` apart, so an idle engine costs nothing and a busy one a few redraws a
second. ``print_logs`` prints stored output page by page as the engine returns it (``logs``
op, ``offset``/``next_offset``), so the first page shows before the last one is read.
``until_interrupted`` runs a view until it ends or the user presses Ctrl-C (a clean end).
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import trio

from wfe.engine.cli.client import Client, ClientError
from wfe.engine.cli.render import local_time, print_job, print_table
from wfe.engine.errors import EngineError
from wfe.engine.repository.job_log import EVENT_KIND
from wfe.engine.runtime.jobs import TERMINAL

REDRAW_INTERVAL = 0.25  # seconds: at most four redraws a second
JOB_KINDS = ("job.", "attempt.")
OVERVIEW_KINDS = (*JOB_KINDS, "agent.")
CLEAR = "\x1b[H\x1b[2J"
LOG_PAGE = 1000  # ctx.log lines per events call


async def watch_status(
    client: Client,
    *,
    job: str | None,
    draw: Callable[[dict[str, Any]], None],
    interval: float = REDRAW_INTERVAL,
    filters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Draw ``status`` now and again after each committed change, at most once per ``interval``.

    Without ``job`` it runs until cancelled, showing the jobs ``filters`` (``find_jobs``
    arguments) select when given; with ``job`` it returns that job's last status once the
    job has ended. Raises ``ClientError`` when the engine closes the connection.
    """
    await client.call("subscribe", kinds=list(JOB_KINDS if job else OVERVIEW_KINDS), compress=True)
    frames = client.frames()  # subscribed before the first read: no change falls in between
    while True:
        if job is None and filters is not None:
            result: dict[str, Any] = {
                "statistics": await client.call("stats"),
                "jobs": await client.call("find_jobs", **filters),
            }
        else:
            result = await client.call("status", **({"job": job} if job else {}))
        drawn_at = trio.current_time()
        draw(result)
        if job is not None and result["state"] in TERMINAL:
            return result
        try:
            await frames.receive()  # the next change (an events or a missed frame)
        except (trio.EndOfChannel, trio.ClosedResourceError):
            reason = client.closed or "closed"
            raise ClientError(f"the engine closed the connection: {reason}", "closed") from None
        await trio.sleep_until(drawn_at + interval)
        while True:  # what else came meanwhile is in the next draw
            try:
                frames.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break


def status_drawer(*, job: str | None, tty: bool) -> Callable[[dict[str, Any]], None]:
    """Print a ``status`` result: over the previous one on a terminal, else after a ``---``."""
    first = True

    def draw(result: dict[str, Any]) -> None:
        nonlocal first
        if tty:
            print(CLEAR, end="")
        elif not first:
            print("---")
        first = False
        print_status(result, job=job)
        sys.stdout.flush()

    return draw


def print_status(result: dict[str, Any], *, job: str | None) -> None:
    """A ``status`` result for people: the job's detail and tree, or statistics and jobs."""
    if job is not None:
        print_job(result)
        return
    stats = result["statistics"]
    print(
        f"agents {stats['agents']}  queued {stats['queued']}  running {stats['running']}"
        f"  actions {stats['running_actions']}  dispatched {stats['dispatched_total']}"
    )
    stuck = stats.get("unplaceable", 0)
    if stuck:
        print(
            f"warning: {stuck} queued job(s) that no connected agent can ever take"
            + (" (no agent is connected)" if not stats["agents"] else "")
        )
    print_table(
        [
            {
                "job": j["id"],
                "name": j["name"],
                "state": j["state"],
                "created": local_time(j.get("created_at")),
                "error": (j["error"] or "")[:60],
            }
            for j in result["jobs"]
        ]
    )


_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, *, now: float | None = None) -> float:
    """``--since`` as seconds since the epoch: an age (``30m``, ``2h``, ``7d``) back from
    ``now``, or an ISO 8601 date or time (local time unless it names its zone). Raises
    ``EngineError`` naming the value."""
    text = text.strip()
    age = _AGE.match(text)
    if age:
        # wall-clock: --since is a date on the operator's clock
        back = float(age.group(1)) * _UNIT[age.group(2)]
        return (time.time() if now is None else now) - back  # wall-clock
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise EngineError(
            f"--since {text!r}: expected an ISO date or time (2026-05-01, 2026-05-01T12:00)"
            " or an age (30m, 2h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return when.timestamp()


def status_filters(args: Any) -> dict[str, Any]:
    """The ``find_jobs`` arguments of ``wfe status``'s filter flags."""
    if not 1 <= args.limit <= 10_000:
        raise EngineError(f"--limit {args.limit}: expected 1 to 10000")
    filters: dict[str, Any] = {"limit": args.limit, "all": args.all}
    if args.state:
        filters["state"] = list(args.state)
    if args.name:
        filters["name"] = args.name
    if args.since:
        filters["since"] = parse_since(args.since)
    return filters


async def print_logs(
    client: Client, job: str, *, attempt: int | None, write: Callable[[str], object]
) -> int:
    """Write an attempt's stored output (the last attempt by default) page by page; return
    the number of pages. Raises ``ClientError`` for an unknown job or attempt."""
    if attempt is None:  # pin the attempt, so that a retry starting meanwhile is not mixed in
        detail = await client.call("job", job=job)
        attempt = int(detail["attempts"])
        if detail["kind"] == "action":  # an action's output is its ctx.log lines
            return await print_job_log(client, job, write=write)
        if attempt == 0:
            return 0
    offset, pages = 0, 0
    while True:
        page = await client.call("logs", job=job, attempt=attempt, offset=offset)
        write(page["output"])
        pages += 1
        if not page["more"]:
            return pages
        offset = page["next_offset"]


async def print_job_log(client: Client, job: str, *, write: Callable[[str], object]) -> int:
    """Write the ``ctx.log`` lines stored for an action job (``job.log`` events), oldest
    first, one ``TIME LEVEL message`` line each; return the number of pages read."""
    after, pages = 0, 0
    while True:
        events = await client.call(
            "events", after=after, kind=EVENT_KIND, subject=job, limit=LOG_PAGE
        )
        pages += 1
        write(
            "".join(
                f"{local_time(e['at'])} {e['data'].get('level', '-')} {e['data'].get('message', '')}\n"
                for e in events
            )
        )
        if len(events) < LOG_PAGE:
            return pages
        after = events[-1]["id"]


def until_interrupted(view: Callable[[], Awaitable[object]]) -> None:
    """Run ``view`` in trio until it returns or SIGINT (Ctrl-C) arrives; either is a clean end.

    Off the main thread (where signals cannot be caught) Ctrl-C is left to Python.
    """

    async def main() -> None:
        if threading.current_thread() is not threading.main_thread():
            await view()
            return
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                await view()
                nursery.cancel_scope.cancel()

    trio.run(main)
