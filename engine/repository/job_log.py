"""``ctx.log``: an action's log lines, stored with its job as ``job.log`` events.

A tasklet's ``ctx.log.info(...)`` goes to the engine's log as before (logger ``wfe.actions``,
with the job id, and the request's when it has one, in ``extra``) and, from INFO up, into the repository as an event whose
subject is the job: ``{"level": "INFO", "message": "..."}``. ``wfe logs JOB`` shows them for
an action job (an action has no output of its own). The line is queued with
``write_nowait``, so logging never waits for a commit; a replay after a restart logs again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from wfe.engine.repository.writer import Tx

if TYPE_CHECKING:
    from wfe.engine.repository import Repository

STORED_LEVEL = logging.INFO  # lines below this level go to the engine's log only
MAX_MESSAGE = 4000  # characters of one stored line; the rest is cut with a marker
EVENT_KIND = "job.log"


def log_event(job_id: str, level: int, message: str) -> Callable[[Tx], None]:
    """A write op recording one log line of ``job_id``."""
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + f"... ({len(message) - MAX_MESSAGE} more characters)"
    data = {"level": logging.getLevelName(level), "message": message}

    def op(tx: Tx) -> None:
        tx.emit(EVENT_KIND, job_id, data)

    return op


class JobLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger adapter for one job that also stores its lines (see the module doc)."""

    def __init__(
        self, logger: logging.Logger, job_id: str, repo: Repository, *, request: str | None = None
    ) -> None:
        super().__init__(logger, {"job": job_id, **({"request": request} if request else {})})
        self.job_id = job_id
        self._repo = repo

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if level >= STORED_LEVEL:
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args}"
            self._repo.write_nowait(log_event(self.job_id, level, text))
        super().log(level, msg, *args, **kwargs)
