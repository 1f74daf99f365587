"""The typed reads and writes the console's operations reach through the Engine facade:
tokens, events, metrics counts and the event index seed, on a real SQLite file."""

from __future__ import annotations

from wfe.engine.repository import Repository, Tx, reader, tokens
from wfe.engine.repository import jobs as job_rows
from wfe.engine.repository.jobs import JobState, NewJob


async def test_a_token_name_has_one_live_token(repo: Repository) -> None:
    """Creating a live name again writes nothing; a revoked name can be created again."""
    first = await repo.write(tokens.create_token("ci", "operator", "a" * 64, by="admin"))
    assert first is not None and (first.name, first.role, first.created_by) == (
        "ci",
        "operator",
        "admin",
    )
    assert await repo.write(tokens.create_token("ci", "viewer", "b" * 64, by="admin")) is None
    assert await repo.read(tokens.token_by_digest("a" * 64)) == ("ci", "operator")
    assert await repo.read(tokens.token_by_digest("b" * 64)) is None

    revoked = await repo.write(tokens.revoke_token("ci", by="root"))
    assert revoked is not None and revoked.revoked_by == "root" and revoked.role == "operator"
    assert await repo.write(tokens.revoke_token("ci", by="root")) is None
    assert await repo.read(tokens.token_by_digest("a" * 64)) is None
    assert await repo.write(tokens.create_token("ci", "viewer", "c" * 64, by="admin")) is not None

    live = await repo.read(tokens.list_tokens())
    every = await repo.read(tokens.list_tokens(revoked=True))
    assert [(t.name, t.role) for t in live] == [("ci", "viewer")]
    assert [(t.name, t.revoked_by) for t in every] == [("ci", "root"), ("ci", None)]
    kinds = [(e.kind, e.subject) for e in await repo.events_since(0)]
    assert kinds == [("token.created", "token:ci"), ("token.revoked", "token:ci"),
                     ("token.created", "token:ci")]  # fmt: skip


async def test_events_are_found_by_kind_prefix_and_subject(repo: Repository) -> None:
    """find_events filters after an id, by kind prefix and subject, oldest first, up to a limit."""

    def emit(tx: Tx) -> None:
        tx.emit("job.state", "j1", {"state": "running"})
        tx.emit("job.log", "j2", {})
        tx.emit("request.state", "r1", {})
        tx.emit("job.state", "j2", {"state": "failed"})

    assert await repo.read(reader.last_event_id) == 0
    await repo.write(emit)
    found = await repo.read(reader.find_events(after=0, limit=10, kind="job."))
    assert [(e.id, e.subject) for e in found] == [(1, "j1"), (2, "j2"), (4, "j2")]
    found = await repo.read(reader.find_events(after=1, limit=10, kind="job.", subject="j2"))
    assert [e.id for e in found] == [2, 4]
    assert [e.id for e in await repo.read(reader.find_events(after=0, limit=2))] == [1, 2]
    assert await repo.read(reader.last_event_id) == 4


async def test_counts_and_the_request_of_unfinished_jobs(repo: Repository) -> None:
    """table_counts groups jobs by kind and state; unfinished_job_requests names the request of
    every unfinished job, its own or its root's, and leaves out finished ones."""
    root = await repo.write(
        job_rows.create_job(NewJob(kind="action", name="a", params={}, request_id="wf-u-0001"))
    )
    child = await repo.write(
        job_rows.create_job(
            NewJob(
                kind="rscript",
                name="s",
                params={},
                parent_id=root.id,
                root_id=root.id,
                call_seq=1,
                state=JobState.QUEUED,
            )  # fmt: skip
        )
    )
    done = await repo.write(job_rows.create_job(NewJob(kind="rscript", name="t", params={})))
    await repo.write(job_rows.set_job_state(done.id, JobState.SUCCEEDED))

    counts = await repo.read(job_rows.table_counts)
    assert sorted(counts.jobs) == [("action", "pending", 1), ("rscript", "queued", 1),
                                   ("rscript", "succeeded", 1)]  # fmt: skip
    assert counts.attempts == [] and counts.events == len(await repo.events_since(0))
    found = await repo.read(job_rows.unfinished_job_requests)
    assert sorted(found) == [(root.id, "wf-u-0001"), (child.id, "wf-u-0001")]
