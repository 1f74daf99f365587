"""The console's search reads (``wfe.engine.repository.search``) on a real SQLite file:
pages of any size cover every match exactly once, newest first, with the same total; filters
combine with AND; ``%`` and ``_`` in a search text are taken literally."""

from __future__ import annotations

from typing import Any, cast

from wfe.engine.repository import Repository, Tx
from wfe.engine.repository.rowtypes import JsonObject
from wfe.engine.repository.search import SearchQuery, search


def rows(page: JsonObject) -> list[dict[str, Any]]:
    return cast("list[dict[str, Any]]", page["rows"])


async def _emit_events(repo: Repository) -> None:
    def emit(tx: Tx) -> None:
        for i in range(9):
            tx.emit("job.state" if i % 2 else "request.state", f"s{i}", {"n": i})
        tx.emit("agent.state", "a_1", {"note": "100% up"})
        tx.emit("agent.state", "ab1", {"note": "100 up"})

    await repo.write(emit)


async def test_pages_of_any_size_cover_every_event_once_newest_first(repo: Repository) -> None:
    """For page sizes 1..12, the pages one after another are exactly all events, newest
    first, and every page reports the same total."""
    await _emit_events(repo)
    everything = await repo.read(search(SearchQuery(kind="events", limit=500)))
    ids = [row["id"] for row in rows(everything)]
    assert ids == list(range(11, 0, -1)) and everything["total"] == 11
    for size in range(1, 13):
        seen: list[object] = []
        for offset in range(0, 12, size):
            page = await repo.read(search(SearchQuery(kind="events", limit=size, offset=offset)))
            assert page["total"] == 11
            seen += [row["id"] for row in rows(page)]
        assert seen == ids, size


async def test_filters_combine_and_wildcards_are_literal(repo: Repository) -> None:
    """A kind prefix and a text combine with AND; ``_`` and ``%`` in the text match only
    themselves; a time range past every event finds none."""
    await _emit_events(repo)

    async def subjects(**filters: object) -> list[object]:
        page = await repo.read(search(SearchQuery(kind="events", **filters)))  # type: ignore[arg-type]
        return [row["subject"] for row in rows(page)]

    assert await subjects(name="job.") == ["s7", "s5", "s3", "s1"]
    assert await subjects(name="job.", text="s3") == ["s3"]
    assert await subjects(text="a_1") == ["a_1"]
    assert await subjects(text="100%") == ["a_1"]
    assert await subjects(name="agent.") == ["ab1", "a_1"]
    assert await subjects(since=4e9) == []
