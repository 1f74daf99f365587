"""Waiting for a request to enter one of a set of states (``RequestService.wait``).

Decided on the committed ``request.state`` events, so a state the request only passed
through still answers; a request that can no longer come to any wanted state answers
at once (or raises), so no waiter is kept forever.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from wfe.engine.repository import Missed
from wfe.engine.repository import requests as store
from wfe.engine.requests.errors import RequestError
from wfe.engine.requests.model import RequestRecord
from wfe.protocols.request import TRANSITIONS, RequestState

if TYPE_CHECKING:
    from wfe.engine.repository import Repository


async def wait_for(repo: Repository, rid: str, states: Collection[RequestState]) -> RequestRecord:
    """Return request ``rid`` once it enters one of ``states`` (committed), or at once if
    it is in one; raise ``RequestError`` naming its state when it never will be.
    See ``RequestService.wait``."""

    async def get() -> RequestRecord:
        return await repo.read(lambda conn: store.get_request(conn, rid))

    wanted = frozenset(states)
    async with repo.subscribe() as events:
        record = await get()
        if record.state in wanted:
            return record
        state = record.state
        while reachable(state) & wanted:
            try:
                event = await anext(events)
            except StopAsyncIteration:
                raise RequestError(f"request {rid}: the engine stopped while waiting") from None
            if isinstance(event, Missed):
                record = await get()
                if record.state in wanted:
                    return record
                state = record.state
            elif event.subject == rid and event.kind == "request.state":
                state = RequestState(event.data["to"])
                if state in wanted:
                    return await get()
        if await repo.read(store.states_entered(rid)) & wanted:
            return await get()
        record = await get()
        why = f" ({record.error})" if record.error else ""
        names = ", ".join(sorted(s.value for s in wanted))
        raise RequestError(f"request {rid}: {state.value}{why}, it will never be {names}")


def reachable(state: RequestState) -> frozenset[RequestState]:
    """The states a request in ``state`` can still come to, ``state`` included."""
    seen = {state}
    todo = [state]
    while todo:
        for after in TRANSITIONS[todo.pop()].values():
            if after not in seen:
                seen.add(after)
                todo.append(after)
    return frozenset(seen)
