"""The pull worker behind ``wfe work run PIPELINE module.function``.

Theory of operation. Over one console connection (a ``worker`` token is enough) the worker
withdraws a work of its pipeline, runs the function in a child process that it keeps from
work to work (``wfe.engine.works.runner.FunctionChild``: the function is imported once) with
the work's ``parameters`` as keyword arguments, and updates
the work with what came back: success with results, products and plots, or failure with the
exception and its traceback in ``results``. While the child runs, the worker renews the
work's lease every third of its timeout (at most every 30 s); at the timeout it kills the
child's whole process group and records the failure (the next work gets a fresh child). If the engine says the lease is gone
(the worker was cut off too long and the work went to someone else), the child is killed
and nothing is updated. When the bucket is empty it waits ``sleep`` seconds and asks again.

``stop`` (SIGTERM or Ctrl-C in the CLI) lets the current work finish and be updated, then
the worker exits; the child runs in its own session so a terminal's signal never reaches it.
A work with a ``command`` and no function is run with ``sh -c``, its parameters in the
environment as ``WFE_PARAMETERS`` (JSON); exit code 0 is success.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from wfe.engine.works.model import WorkStatus
from wfe.engine.works.runner import FunctionChild, run_command

if TYPE_CHECKING:
    from wfe.engine.cli.client import Client

log = logging.getLogger("wfe.worker")

HEARTBEAT_MAX = 30.0  # seconds: the longest wait between two heartbeats


@attrs.frozen(kw_only=True)
class WorkerSpec:
    """What a worker serves and how."""

    pipeline: str
    function: str | None  # module.function; None: each work's own function or command
    lives: int | None = None  # works to perform before exiting; None: for ever
    sleep: float = 5.0  # seconds between withdraws that found nothing
    filters: dict[str, Any] = attrs.Factory(dict)  # site, tags, event (work.withdraw's args)


@attrs.frozen(kw_only=True)
class Performed:
    """One work as this worker left it."""

    id: str
    attempt: int
    status: str  # what the engine stored (success, failure, queued again) or "abandoned"
    seconds: float
    error: str | None = None


def heartbeat_interval(timeout: float) -> float:
    """How often to renew a lease of ``timeout`` seconds."""
    return min(timeout / 3, HEARTBEAT_MAX)


def outcome_changes(outcome: dict[str, Any]) -> dict[str, Any]:
    """The child's outcome as the update of the work (status and what goes with it)."""
    if outcome.get("ok"):
        return {
            "status": WorkStatus.SUCCESS.value,
            "results": outcome.get("results"),
            "products": outcome.get("products"),
            "plots": outcome.get("plots"),
        }
    return {
        "status": WorkStatus.FAILURE.value,
        "results": {"error": outcome.get("error"), "traceback": outcome.get("traceback")},
    }


async def run_worker(
    client: Client,
    spec: WorkerSpec,
    stop: trio.Event,
    report: Callable[[Performed], None] = lambda p: None,
) -> int:
    """Serve ``spec.pipeline`` until ``stop`` is set or ``spec.lives`` works are done;
    return how many works were performed.

    Each update also withdraws the next work (one round trip and one commit per work) while
    more are wanted when it is sent; a work withdrawn that way is performed even if ``stop``
    came while that update was on its way."""
    done = 0
    children: dict[str, FunctionChild] = {}
    withdraw = {"pipeline": spec.pipeline, **spec.filters}
    found: dict[str, Any] | None = None
    try:
        while found is not None or (
            (spec.lives is None or done < spec.lives) and not stop.is_set()
        ):
            if found is None:
                found = (await client.call("work.withdraw", **withdraw))["work"]
                if found is None:
                    with trio.move_on_after(spec.sleep):
                        await stop.wait()
                    continue
            function = spec.function or found.get("function")
            child = None
            if function is not None or not found.get("command"):
                key = function or "-"  # none at all: the child says it is not module.function
                child = children.get(key) or children.setdefault(key, FunctionChild(key))

            def then(done: int = done) -> dict[str, Any] | None:
                """At the update: whether to withdraw the next work with it."""
                more = (spec.lives is None or done + 1 < spec.lives) and not stop.is_set()
                return withdraw if more else None

            performed, found = await perform(client, found, child, then)
            report(performed)
            done += 1
    finally:
        for child in children.values():
            await child.close()
    return done


async def perform(
    client: Client,
    work: dict[str, Any],
    child: FunctionChild | None,
    then: Callable[[], dict[str, Any] | None] = lambda: None,
) -> tuple[Performed, dict[str, Any] | None]:
    """Run one withdrawn work (in ``child``, or its command when None) and update it; when
    ``then()`` gives work.withdraw's args at that moment, the update also withdraws the next
    work. Return what became of the work, and the next one (or None)."""
    started = trio.current_time()
    work_id, attempt, timeout = work["id"], work["attempt"], float(work["timeout"])
    lost = trio.Event()
    outcome: dict[str, Any] = {
        "ok": False,
        "error": f"timeout: still running after {timeout:g} s, killed",
    }
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_beat, client, work_id, attempt, timeout, lost, nursery.cancel_scope)
            if child is not None:
                outcome = await child.call(work.get("parameters"))
            else:
                outcome = await run_command(work["command"], work_id, work.get("parameters"))
            nursery.cancel_scope.cancel()
    seconds = trio.current_time() - started
    if lost.is_set():
        log.warning("work %s attempt %d: lease lost, result dropped", work_id, attempt)
        gone = Performed(id=work_id, attempt=attempt, status="abandoned", seconds=seconds)
        return gone, None
    changes = outcome_changes(outcome)
    after = None
    withdraw = then()
    if withdraw is None:
        stored = await client.call("work.update", id=work_id, attempt=attempt, **changes)
    else:
        both = await client.call(
            "work.update", id=work_id, attempt=attempt, withdraw=withdraw, **changes
        )
        stored, after = both["updated"], both["next"]
    performed = Performed(
        id=work_id,
        attempt=attempt,
        status=stored["status"],
        seconds=seconds,
        error=None if outcome.get("ok") else outcome.get("error"),
    )
    return performed, after


async def _beat(
    client: Client,
    work_id: str,
    attempt: int,
    period: float,
    lost: trio.Event,
    work_scope: trio.CancelScope,
) -> None:
    """Renew the lease until cancelled; when the engine says it is gone, set ``lost`` and
    cancel the work (its process is killed: its result would be refused)."""
    from wfe.engine.cli.client import ClientError

    while True:
        await trio.sleep(heartbeat_interval(period))
        try:
            await client.call("work.heartbeat", id=work_id, attempt=attempt)
        except ClientError as exc:
            if exc.code in ("refused", "not_found"):
                lost.set()
                work_scope.cancel()
                return
            raise


__all__ = [
    "Performed",
    "WorkerSpec",
    "heartbeat_interval",
    "outcome_changes",
    "perform",
    "run_worker",
]
