"""``ctx.work``: a tasklet deposits a work into a pull workers' bucket and awaits its end.

The deposit is recorded with the call's number (``work_calls``), so a tasklet replayed after a
restart finds the work it deposited before instead of depositing it again; its wait then picks
up where it was (the work may have ended meanwhile). Waiting follows the committed events of
the work: nothing polls.
"""

from __future__ import annotations

from typing import Any

from wfe.engine.errors import EngineError
from wfe.engine.repository import Repository
from wfe.engine.repository import works as rows
from wfe.engine.repository.events import Event
from wfe.engine.works.model import TERMINAL, Work, WorkStatus, parse_work


class WorkFailed(EngineError):
    """A work a tasklet waited for ended in failure or was cancelled."""

    def __init__(self, work: Work) -> None:
        reason = (work.results or {}).get("error") if isinstance(work.results, dict) else None
        super().__init__(
            f"work {work.id} ({work.pipeline}) ended {work.status.value}"
            + (f": {reason}" if reason else "")
        )
        self.work = work


async def deposit_and_wait(
    repo: Repository,
    *,
    parent: str,
    call_seq: int,
    fields: dict[str, Any],
    check: bool = True,
) -> Work:
    """Deposit the work made of ``fields`` for call ``call_seq`` of job ``parent`` (once), wait
    until it ends and return it. Raises ``WorkError`` for bad fields (nothing deposited), and
    ``WorkFailed`` when it fails or is cancelled, unless ``check`` is false."""
    work = parse_work(fields)
    work_id = await repo.write(rows.deposit_call(work, parent=parent, call_seq=call_seq))
    async with repo.subscribe() as events:  # subscribed before reading: no end is missed
        ended = await _ended(repo, work_id)
        if ended is None:
            async for event in events:
                # a Missed marker (we fell behind) or an event of this work: look again
                if isinstance(event, Event) and event.subject != work_id:
                    continue
                ended = await _ended(repo, work_id)
                if ended is not None:
                    break
    assert ended is not None
    if check and ended.status is not WorkStatus.SUCCESS:
        raise WorkFailed(ended)
    return ended


async def _ended(repo: Repository, work_id: str) -> Work | None:
    work = await repo.read(lambda conn: rows.get_work(conn, work_id))
    if work is None:  # deleted by an operator while we waited
        raise EngineError(f"work {work_id} was deleted while a tasklet waited for it")
    return work if work.status in TERMINAL else None
