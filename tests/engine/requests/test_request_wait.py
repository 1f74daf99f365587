"""``RequestService.wait`` (the ``request_wait`` op): answered for a state the request only
passed through, and never kept waiting for a state the request can no longer come to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.client import ClientError
from wfe.engine.repository import requests as store
from wfe.engine.requests.errors import RequestError
from wfe.protocols.request import Actor, RequestState, RequestVerb

from .conftest import HEAD, World, open_world

STRICT = (
    HEAD.replace('approval = "none"', 'approval = "required"')
    + """
[[stages]]
name = "a"
rscript = "work"
consumes = "query"
"""
)

GUARD = 10.0  # seconds: a wait that is not answered by then would never be


def approve_and_fail(rid: str) -> Any:
    """Write: an operator approves ``rid`` and the engine fails it, in one commit."""

    def op(tx: Any) -> None:
        store.transition(rid, RequestVerb.APPROVE, Actor.OPERATOR)(tx)
        store.transition(rid, RequestVerb.FAIL, Actor.ENGINE, reason="no inputs")(tx)

    return op


async def submitted(world: World) -> str:
    record = await world.submit(world.definition(STRICT))
    assert (record["state"], record["approval_required"]) == ("submitted", True)
    return str(record["id"])


async def test_a_state_passed_through_answers_a_waiter(tmp_path: Path) -> None:
    """A request that is approved and fails in the same commit answers a waiter for
    ``approved`` (with the record as it is now: failed), whether the wait began before
    or after; a waiter for ``running`` is refused at once, naming the state and error."""
    async with open_world(tmp_path, agents=0) as world:
        service = world.engine.requests
        assert service is not None
        rid = await submitted(world)
        answers: list[Any] = []

        async def waiter() -> None:
            answers.append(await service.wait(rid, {RequestState.APPROVED}))

        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await world.engine.repo.write(approve_and_fail(rid))
            assert [a.state for a in answers] == [RequestState.FAILED]

            late = await service.wait(rid, {RequestState.APPROVED, RequestState.RUNNING})
            assert late.state is RequestState.FAILED
            with pytest.raises(RequestError) as info:
                await service.wait(rid, {RequestState.RUNNING, RequestState.CHECKING})
            assert str(info.value) == (
                f"request {rid}: failed (no inputs), it will never be checking, running"
            )


async def test_the_api_refuses_a_wait_that_can_not_end(tmp_path: Path) -> None:
    """``request_wait`` for a state a cancelled request never reached is refused with one
    line instead of hanging until the client gives up."""
    async with open_world(tmp_path, agents=0) as world:
        rid = await submitted(world)
        await world.call("cancel", request=rid)
        with trio.fail_after(GUARD), pytest.raises(ClientError) as info:
            await world.wait(rid, "approved", "running")
        assert f"request {rid}: cancelled, it will never be approved, running" in str(info.value)
