"""The work queue's console operations and the worker role, over a real console."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.client import Client, ClientError
from wfe.engine.console.registry import OPS
from wfe.engine.console.tokens import Role

from .conftest import GUARD, Api


async def refused(client: Client, op: str, **args: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await client.call(op, **args)
    return caught.value


def test_the_worker_role_reaches_the_work_queue_only() -> None:
    """A worker token may use the work ops except cancel and delete, and no other op; a
    viewer reads works; operators do everything with them."""
    allowed = {name for name, o in OPS.items() if o.allows(Role.WORKER)}
    assert allowed == {
        "work.deposit",
        "work.withdraw",
        "work.heartbeat",
        "work.update",
        "work.get",
        "work.files",
        "work.find",
        "work.count",
        "work.buckets",
    }
    viewer = {name for name, o in OPS.items() if name.startswith("work.") and o.allows(Role.VIEWER)}
    assert viewer == {"work.get", "work.files", "work.find", "work.count", "work.buckets"}
    assert all(o.allows(Role.OPERATOR) for n, o in OPS.items() if n.startswith("work."))


async def test_a_worker_deposits_withdraws_and_updates_and_does_nothing_else(api: Api) -> None:
    """Through the console a worker token runs the whole cycle; a job op, a token op and an
    operator's delete are refused to it with `forbidden`."""
    with trio.fail_after(GUARD):
        async with api.as_role("worker") as worker:
            ids = (
                await worker.call(
                    "work.deposit",
                    works=[
                        {"pipeline": "sample", "parameters": {"a": 1, "b": 2}},
                        {"pipeline": "sample", "priority": 5},
                    ],
                )
            )["ids"]
            first = (await worker.call("work.withdraw", pipeline="sample"))["work"]
            assert first["id"] == ids[1] and first["status"] == "running"
            beat = await worker.call("work.heartbeat", id=first["id"], attempt=1)
            assert beat["lease"] == 3600
            done = await worker.call(
                "work.update", id=first["id"], attempt=1, status="success", results={"sum": 3}
            )
            assert done["status"] == "success" and done["stop"] is not None
            assert (await worker.call("work.count", pipeline="sample", status="queued")) == {
                "count": 1
            }
            for op, args in (
                ("jobs", {}),
                ("whoami", {}),
                ("run", {"action": "x"}),
                ("token.list", {}),
                ("work.delete", {"ids": ids}),
                ("work.cancel", {"id": ids[0]}),
            ):
                error = await refused(worker, op, **args)
                assert error.code == "forbidden", op
                assert "token 'worker-1' is worker" in str(error)


async def test_viewers_read_works_and_operators_cancel_and_delete(api: Api) -> None:
    """A viewer finds works but cannot deposit; an operator cancels and deletes; each
    change's event names the token that made it."""
    with trio.fail_after(GUARD):
        async with api.as_role("operator") as operator, api.as_role("viewer") as viewer:
            (wid,) = (await operator.call("work.deposit", work={"pipeline": "p"}))["ids"]
            found = await viewer.call("work.find", pipeline="p")
            assert found["count"] == 1 and found["works"][0]["id"] == wid
            error = await refused(viewer, "work.deposit", work={"pipeline": "p"})
            assert error.code == "forbidden"
            assert (await operator.call("work.cancel", id=wid))["status"] == "cancelled"
            assert await operator.call("work.delete", ids=[wid]) == {"deleted": [wid]}
            events = await viewer.call("events", kind="work.", subject=wid)
            assert [(e["kind"], e["data"]["by"]) for e in events] == [
                ("work.deposited", "operator-1"),
                ("work.cancelled", "operator-1"),
                ("work.deleted", "operator-1"),
            ]
            error = await refused(viewer, "work.get", id=wid)
            assert error.code == "not_found"


BAD_WORKS: list[tuple[dict[str, Any], str]] = [
    ({"pipeline": "p", "colour": "red"}, "works[1].colour: unknown field"),
    ({"pipeline": "p", "priority": 9}, "works[1].priority: must be 1..5, got 9"),
    ({"pipeline": "p", "timeout": 0}, "works[1].timeout: must be 1..604800 s, got 0"),
    (
        {"pipeline": "p", "function": "m.f", "command": "true"},
        "works[1].function, command: give one of them, not both",
    ),
    ({"pipeline": "p", "parameters": [1, 2]}, "works[1].parameters: expected"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_WORKS)
async def test_a_bad_work_spoils_its_deposit_and_is_named(
    api: Api, bad: dict[str, Any], message: str
) -> None:
    """A deposit with one bad work is refused with one line naming it; nothing is stored."""
    with trio.fail_after(GUARD):
        async with api.as_role("admin") as admin:
            error = await refused(admin, "work.deposit", works=[{"pipeline": "p"}, bad])
            assert error.code == "bad_request"
            assert str(error).startswith(message) and "\n" not in str(error)
            assert await admin.call("work.count") == {"count": 0}
            assert await admin.call("events", kind="work.") == []


async def test_a_late_update_after_the_lease_moved_on_is_refused(api: Api) -> None:
    """Once a work is queued again for attempt 2, the first worker's update is refused and
    changes nothing; the second attempt's success is the one recorded."""
    with trio.fail_after(GUARD):
        async with api.as_role("worker") as worker:
            (wid,) = (await worker.call("work.deposit", work={"pipeline": "p"}))["ids"]
            await worker.call("work.withdraw", pipeline="p")
            failed = await worker.call(
                "work.update", id=wid, attempt=1, status="failure", results={"error": "boom"}
            )
            assert (failed["status"], failed["attempt"]) == ("queued", 2)
            error = await refused(worker, "work.update", id=wid, attempt=1, status="success")
            assert error.code == "refused" and "attempt 1 is over" in str(error)
            error = await refused(worker, "work.heartbeat", id=wid, attempt=1)
            assert error.code == "refused"
            again = (await worker.call("work.withdraw", pipeline="p"))["work"]
            assert again["attempt"] == 2
            done = await worker.call("work.update", id=wid, attempt=2, status="success")
            assert done["status"] == "success"


async def test_an_update_that_withdraws_the_next_work(api: Api) -> None:
    """work.update with withdraw answers {updated, next}: the next work is running under the
    same token's lease; with the bucket empty, next is null."""
    with trio.fail_after(GUARD):
        async with api.as_role("worker") as worker:
            first, second = (
                await worker.call("work.deposit", works=[{"pipeline": "p"}, {"pipeline": "p"}])
            )["ids"]
            await worker.call("work.withdraw", pipeline="p")
            both = await worker.call(
                "work.update", id=first, attempt=1, status="success", withdraw={"pipeline": "p"}
            )
            assert both["updated"]["status"] == "success"
            assert (both["next"]["id"], both["next"]["status"]) == (second, "running")
            assert (await worker.call("work.heartbeat", id=second, attempt=1))["id"] == second
            last = await worker.call(
                "work.update", id=second, attempt=1, status="success", withdraw={"pipeline": "p"}
            )
            assert last["next"] is None


async def test_a_successful_works_files_are_archived_with_size_and_sha256(
    api: Api, tmp_path: Path
) -> None:
    """Success with products and plots copies the files the engine can read into
    <workspace>/archive/<pipeline>/<id>/ and records size and sha256; a missing or relative
    path is recorded with the reason; the work keeps the paths it was given; a work with
    archive = false, or an update that is refused, leaves no copy."""
    product = tmp_path / "out.fits"
    product.write_bytes(b"fits" * 1000)
    missing = str(tmp_path / "gone.png")
    with trio.fail_after(GUARD):
        async with api.as_role("worker") as worker:
            kept, plain = (
                await worker.call(
                    "work.deposit",
                    works=[{"pipeline": "p", "priority": 5}, {"pipeline": "p", "archive": False}],
                )
            )["ids"]
            await worker.call("work.withdraw", pipeline="p")
            error = await refused(
                worker, "work.update", id=kept, attempt=2, status="success", products=[str(product)]
            )
            assert error.code == "refused"
            archive = api.engine.config.root / "archive" / "p"
            assert not (archive / kept).exists()
            done = await worker.call(
                "work.update",
                id=kept,
                attempt=1,
                status="success",
                products=[str(product)],
                plots=[missing, "rel.png"],
            )
            assert done["products"] == [str(product)]
            files = await worker.call("work.files", id=kept)
            copy = archive / kept / "out.fits"
            assert files == [
                {
                    "kind": "product",
                    "source": str(product),
                    "archived": str(copy),
                    "size": 4000,
                    "sha256": hashlib.sha256(b"fits" * 1000).hexdigest(),
                    "reason": None,
                },
                {
                    "kind": "plot",
                    "source": missing,
                    "archived": None,
                    "size": None,
                    "sha256": None,
                    "reason": "not found on the engine's host",
                },
                {
                    "kind": "plot",
                    "source": "rel.png",
                    "archived": None,
                    "size": None,
                    "sha256": None,
                    "reason": "not an absolute path",
                },
            ]
            assert copy.read_bytes() == product.read_bytes()
            await worker.call("work.withdraw", pipeline="p")
            await worker.call(
                "work.update", id=plain, attempt=1, status="success", products=[str(product)]
            )
            assert await worker.call("work.files", id=plain) == []
            assert not (archive / plain).exists()
