"""The pull worker behind ``wfe work run PIPELINE module.function``.

Theory of operation. Over one console connection (a ``worker`` token is enough) the worker
withdraws a work of its pipeline, runs the function in a child process
(``wfe.engine.works.child``) with the work's ``parameters`` as keyword arguments, and updates
the work with what came back: success with results, products and plots, or failure with the
exception and its traceback in ``results``. While the child runs, the worker renews the
work's lease every third of its timeout (at most every 30 s); at the timeout it kills the
child's whole process group and records the failure. If the engine says the lease is gone
(the worker was cut off too long and the work went to someone else), the child is killed
and nothing is updated. When the bucket is empty it waits ``sleep`` seconds and asks again.

``stop`` (SIGTERM or Ctrl-C in the CLI) lets the current work finish and be updated, then
the worker exits; the child runs in its own session so a terminal's signal never reaches it.
A work with a ``command`` and no function is run with ``sh -c``, its parameters in the
environment as ``WFE_PARAMETERS`` (JSON); exit code 0 is success.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from wfe.engine.works.model import WorkStatus

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
    return how many works were performed."""
    done = 0
    while (spec.lives is None or done < spec.lives) and not stop.is_set():
        found = (await client.call("work.withdraw", pipeline=spec.pipeline, **spec.filters))["work"]
        if found is None:
            with trio.move_on_after(spec.sleep):
                await stop.wait()
            continue
        report(await perform(client, found, spec.function))
        done += 1
    return done


async def perform(client: Client, work: dict[str, Any], function: str | None) -> Performed:
    """Run one withdrawn work in a child process and update it; return what became of it."""
    started = trio.current_time()
    work_id, attempt, timeout = work["id"], work["attempt"], float(work["timeout"])
    lost = trio.Event()
    with tempfile.TemporaryDirectory(prefix="wfe-work-") as scratch:
        argv, env = _child(work, function, Path(scratch))
        outcome: dict[str, Any]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_beat, client, work_id, attempt, timeout, lost)
            outcome = await _run_child(argv, env, Path(scratch), timeout, lost)
            nursery.cancel_scope.cancel()
    seconds = trio.current_time() - started
    if lost.is_set():
        log.warning("work %s attempt %d: lease lost, result dropped", work_id, attempt)
        return Performed(id=work_id, attempt=attempt, status="abandoned", seconds=seconds)
    stored = await client.call(
        "work.update", id=work_id, attempt=attempt, **outcome_changes(outcome)
    )
    return Performed(
        id=work_id,
        attempt=attempt,
        status=stored["status"],
        seconds=seconds,
        error=None if outcome.get("ok") else outcome.get("error"),
    )


def _child(
    work: dict[str, Any], function: str | None, scratch: Path
) -> tuple[list[str], dict[str, str]]:
    spec = function or work.get("function")
    env = dict(os.environ, WFE_WORKER_PID=str(os.getpid()))
    if spec is None and work.get("command"):
        env["WFE_PARAMETERS"] = json.dumps(work.get("parameters") or {})
        env["WFE_WORK"] = work["id"]
        return ["sh", "-c", work["command"]], env
    if spec is None:
        spec = "-"  # the child reports: not module.function
    (scratch / "in.json").write_text(json.dumps(work.get("parameters") or {}))
    argv = [sys.executable, "-m", "wfe.engine.works.child", spec]
    return [*argv, str(scratch / "in.json"), str(scratch / "out.json")], env


async def _run_child(
    argv: list[str], env: dict[str, str], scratch: Path, limit: float, lost: trio.Event
) -> dict[str, Any]:
    process = await trio.lowlevel.open_process(argv, env=env, start_new_session=True)
    try:
        with trio.move_on_after(limit) as overran:
            async with trio.open_nursery() as nursery:

                async def cancel_when_lost() -> None:
                    await lost.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(cancel_when_lost)
                await process.wait()
                nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            _kill_group(process.pid)
            with trio.CancelScope(shield=True):
                await process.wait()
    if overran.cancelled_caught:
        return {"ok": False, "error": f"timeout: still running after {limit:g} s, killed"}
    out = scratch / "out.json"
    if argv[0] == "sh":
        if process.returncode == 0:
            return {"ok": True, "results": None}
        return {"ok": False, "error": f"command exited with code {process.returncode}"}
    if not out.exists():
        code = process.returncode
        assert code is not None  # waited for above
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return {"ok": False, "error": f"the function's process {how} without a result"}
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def _beat(
    client: Client, work_id: str, attempt: int, period: float, lost: trio.Event
) -> None:
    """Renew the lease until cancelled; set ``lost`` when the engine says it is gone."""
    from wfe.engine.cli.client import ClientError

    while True:
        await trio.sleep(heartbeat_interval(period))
        try:
            await client.call("work.heartbeat", id=work_id, attempt=attempt)
        except ClientError as exc:
            if exc.code in ("refused", "not_found"):
                lost.set()
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
