"""The typed functions on the requests' tables (wfe.engine.repository.requests, request_batches,
catalog), on a real SQLite file: what a restart, a rerun and the console's event index read."""

from __future__ import annotations

import pytest

from wfe.engine.definitions import build_definition
from wfe.engine.repository import Repository, catalog, request_batches
from wfe.engine.repository import requests as rows
from wfe.engine.requests.approval import ApprovalDecision
from wfe.engine.requests.errors import RefusedTransition, UnknownRequest
from wfe.engine.requests.model import BatchOutcome
from wfe.protocols.request import Actor, InputState, RequestState, RequestVerb

DEFINITION = build_definition(
    {
        "workflow": {"name": "wf", "namespace": "survey"},
        "query": {},
        "stages": [{"name": "a", "rscript": "work", "consumes": "query"}],
    }
)


async def _submit(repo: Repository, user: str = "ann") -> str:
    sub = rows.Submission(
        definition=DEFINITION,
        scripts={"work": ("work@1", "f" * 64, "#!/bin/sh\necho hi\n")},
        user=user,
        namespace="survey",
        params={"n": 1},
        priority=0,
        approval=ApprovalDecision(required=False, rule="test"),
        by="ann",
    )
    return (await repo.write(rows.store_submission(sub))).id


async def test_a_submission_is_stored_with_its_definition_and_scripts(repo: Repository) -> None:
    """The request reads back submitted, its definition and script text by content, and it is
    named among the live requests and the namespaces; an unknown id is refused."""
    rid = await _submit(repo)
    record = await repo.read(lambda conn: rows.get_request(conn, rid))
    assert (record.state, record.namespace, record.params) == (
        RequestState.SUBMITTED,
        "survey",
        {"n": 1},
    )
    stored = await repo.read(lambda conn: rows.stored_definition(conn, DEFINITION.sha256))
    assert stored.expanded == DEFINITION.expanded and stored.git is None
    assert await repo.read(lambda conn: rows.script_text(conn, "f" * 64)) == "#!/bin/sh\necho hi\n"
    assert await repo.read(lambda conn: rows.script_text(conn, "0" * 64)) is None
    assert await repo.read(rows.live_requests) == [rid]
    assert await repo.read(rows.request_namespaces) == [(rid, "survey")]
    with pytest.raises(UnknownRequest):
        await repo.read(lambda conn: rows.get_request(conn, "wf-bob-0001"))


async def test_an_illegal_transition_changes_nothing(repo: Repository) -> None:
    """A verb the lifecycle refuses raises RefusedTransition naming the state; with ``expect``
    a step for another state does nothing."""
    rid = await _submit(repo)
    with pytest.raises(RefusedTransition, match="resume in state SUBMITTED"):
        await repo.write(rows.transition(rid, RequestVerb.RESUME, Actor.OPERATOR))
    skipped = rows.transition(rid, RequestVerb.START, Actor.ENGINE, expect=RequestState.APPROVED)
    assert await repo.write(skipped) is None
    assert (await repo.read(rows.states_entered(rid))) == {
        RequestState.DRAFT,
        RequestState.SUBMITTED,
    }


async def test_failed_inputs_are_what_a_rerun_takes(repo: Repository) -> None:
    """Inputs withdrawn as failed from a settled batch are listed by path for a rerun; the
    paused list, the catalog scan and entries read back as written."""
    await repo.write(
        catalog.add_entries(
            [
                catalog.NewEntry(
                    path="/d/x.csv", size=3, sha256="1" * 64, metadata={"kind": "raw"}
                ),
                catalog.NewEntry(path="/d/y.csv", size=4, sha256="2" * 64, metadata={}),
            ]
        )
    )
    assert [p for p, _, _ in await repo.read(lambda c: list(catalog.scan(c)))] == [
        "/d/x.csv",
        "/d/y.csv",
    ]
    entry = await repo.read(lambda conn: catalog.entry(conn, "/d/x.csv"))
    assert entry is not None and entry.metadata == {"kind": "raw"}

    rid = await _submit(repo)
    await repo.write(rows.transition(rid, RequestVerb.APPROVE, Actor.OPERATOR))
    found = [("catalog:/d/x.csv", "/d/x.csv", {}), ("catalog:/d/y.csv", "/d/y.csv", {})]
    await repo.write(rows.start_request(rid, DEFINITION, found))
    batch = await repo.write(
        request_batches.open_batch(rid, "a", ["catalog:/d/x.csv"], output_root=None)
    )
    await repo.write(
        request_batches.settle_batch(batch, BatchOutcome.RELEASED, max_allocations=1, reason="boom")
    )
    snap = await repo.read(rows.read_snapshot(rid))
    states = {i.key: i.allocation.state for i in snap.inputs["a"]}
    assert states == {
        "catalog:/d/x.csv": InputState.FAILED,
        "catalog:/d/y.csv": InputState.UNALLOCATED,
    }
    assert await repo.read(lambda conn: rows.failed_inputs(conn, rid, ["a"])) == ["/d/x.csv"]
    assert await repo.read(lambda conn: rows.failed_inputs(conn, rid, ["b"])) == []
    await repo.write(rows.transition(rid, RequestVerb.PAUSE, Actor.OPERATOR))
    assert await repo.read(rows.paused_requests) == [rid]
