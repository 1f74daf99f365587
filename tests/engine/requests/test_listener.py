"""The requests service's event listener takes what one commit published in one batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wfe.engine.repository import Event, Missed, open_repository
from wfe.engine.requests import RequestService


class Batches:
    """A subscription that hands out given batches through ``receive_batch`` only."""

    def __init__(self, *batches: list[Event | Missed]) -> None:
        self.batches = list(batches)
        self.calls = 0

    async def receive_batch(self, max_items: int = 1000) -> list[Event | Missed]:
        self.calls += 1
        return self.batches.pop(0) if self.batches else []


def job_state(n: int, job_id: str, **data: Any) -> Event:
    return Event(id=n, at=0.0, kind="job.state", subject=job_id, data=data)


async def test_one_batch_of_events_is_taken_in_one_receive(tmp_path: Path) -> None:
    """A committed batch of job ends and requeues pokes the owning requests after one
    ``receive_batch``; other events and unknown jobs poke nothing; a ``Missed`` pokes every
    live request (none here) once."""
    async with open_repository(tmp_path / "wfe.db", inline=True) as repo:
        service = RequestService(repo=repo, controller=object())  # type: ignore[arg-type]
        pokes: list[str] = []
        service.poke = pokes.append  # type: ignore[method-assign, assignment]
        service._jobs = {f"j{n}": "r1" if n % 2 else "r2" for n in range(100)}
        batch: list[Event | Missed] = [
            *(job_state(n, f"j{n}", state="succeeded") for n in range(0, 100, 2)),
            *(job_state(n, f"j{n}", state="queued", retry_after=0.0) for n in range(1, 100, 2)),
            job_state(200, "j1", state="running"),
            job_state(201, "elsewhere", state="failed"),
            Missed(first_id=202, last_id=210),
        ]
        events = Batches(batch)
        await service._listen(events)  # type: ignore[arg-type]
        assert events.calls == 2  # the batch, then the end of the subscription
        assert sorted(set(pokes)) == ["r1", "r2"]
        assert len(pokes) == 100
