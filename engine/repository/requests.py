"""The repository side of requests: write ops (run by the writer, each emitting its events
in the same transaction) and read functions (run on read-only connections).

Every state change of a request is checked against ``wfe.protocols.request`` inside the op
that writes it, so two operators acting at once are serialised by the writer and the
second one is refused naming the state the first one left. Nothing here awaits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from wfe.engine.definitions import Definition
from wfe.engine.repository import jobs
from wfe.engine.repository.jobs import TERMINAL_SQL, JobState
from wfe.engine.repository.rowtypes import Conn, Db, JsonObject, JsonValue, Row
from wfe.engine.repository.writer import Tx
from wfe.engine.requests.approval import ApprovalDecision
from wfe.engine.requests.errors import RefusedTransition, UnknownRequest
from wfe.engine.requests.model import (
    Batch,
    JobEnd,
    RequestRecord,
    Snapshot,
    StageInput,
    StageRecord,
    StageState,
)
from wfe.protocols.errors import IllegalTransition
from wfe.protocols.request import (
    ACTIVE_STATES,
    Actor,
    InputAllocation,
    InputState,
    NotPermitted,
    RequestLifecycle,
    RequestState,
    RequestVerb,
    Transition,
    request_id,
)

#: States in which the service has something to do for a request.
LIVE_STATES = frozenset({RequestState.SUBMITTED, RequestState.APPROVED, *ACTIVE_STATES})

_REQUEST_COLUMNS = (
    "id, workflow, user, number, definition, namespace, params, priority, approval_required,"
    " scripts, state, created_at, updated_at, error, failures"
)


def _request(row: Row) -> RequestRecord:
    return RequestRecord(
        id=row[0],
        workflow=row[1],
        user=row[2],
        number=row[3],
        definition=row[4],
        namespace=row[5],
        params=json.loads(row[6]),
        priority=row[7],
        approval_required=bool(row[8]),
        scripts=json.loads(row[9]),
        state=RequestState(row[10]),
        created_at=row[11],
        updated_at=row[12],
        error=row[13],
        failures=tuple(json.loads(row[14])),
    )


def get_request(db: Db, rid: str) -> RequestRecord:
    """The request ``rid``; raises ``UnknownRequest``."""
    row = db.execute(f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE id = ?", (rid,)).fetchone()
    if row is None:
        raise UnknownRequest(f"no request {rid} (see `wfe requests`)")
    return _request(row)


def requeued_after(job_id: str, attempt: int) -> Callable[[Conn], bool]:
    """Whether the controller has committed ``job_id``'s requeue after ``attempt`` (its
    retry): the job is queued again and that attempt was its last."""

    def fn(conn: Conn) -> bool:
        return jobs.job_progress(job_id)(conn) == (JobState.QUEUED, attempt)

    return fn


# --- submission and the lifecycle -------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Submission:
    """What ``store_submission`` records: a checked definition, its scripts, the request."""

    definition: Definition
    scripts: Mapping[str, tuple[str, str, str]]  # name -> (library key, sha256, text)
    library_scripts: Mapping[str, str] = attrs.field(factory=dict)  # name -> key, engine library
    user: str
    namespace: str
    params: Mapping[str, JsonValue]
    priority: int
    approval: ApprovalDecision  # whether a person must approve, and why
    by: str  # who submitted it (a console token's name), recorded on the submit event


def store_definition(
    tx: Tx,
    d: Definition,
    scripts: Mapping[str, tuple[str, str, str]],
    library_scripts: Mapping[str, str],
) -> JsonObject:
    """Store a definition and its scripts by content (once each); return the request's
    ``scripts`` mapping (name -> {key, sha256}; sha256 None for the engine's library)."""
    git = None if d.git is None else attrs.asdict(d.git)
    tx.execute(
        "INSERT OR IGNORE INTO definitions (sha256, name, namespace, expanded, sources, git, stored_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (d.sha256, d.name, d.namespace, json.dumps(d.expanded), json.dumps(list(d.sources)),
         None if git is None else json.dumps(git), tx.at),
    )  # fmt: skip
    mapping: JsonObject = {}
    for name, (key, sha, text) in scripts.items():
        tx.execute(
            "INSERT OR IGNORE INTO rscript_texts (sha256, name, text, stored_at) VALUES (?, ?, ?, ?)",
            (sha, name, text, tx.at),
        )
        mapping[name] = {"key": key, "sha256": sha}
    for name, key in library_scripts.items():
        mapping[name] = {"key": key, "sha256": None}
    return mapping


def store_submission(sub: Submission) -> Callable[[Tx], RequestRecord]:
    """Store the definition and scripts (by content, once), allocate the request id and
    record the request as draft, then submitted (two events)."""

    def op(tx: Tx) -> RequestRecord:
        d = sub.definition
        mapping = store_definition(tx, d, sub.scripts, sub.library_scripts)
        number = tx.allocate(f"request:{d.name}:{sub.user}")
        rid = request_id(d.name, sub.user, number)
        tx.execute(
            f"INSERT INTO requests ({_REQUEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, '[]')",
            (rid, d.name, sub.user, number, d.sha256, sub.namespace, json.dumps(dict(sub.params)),
             sub.priority, int(sub.approval.required), json.dumps(mapping), RequestState.DRAFT.value,
             tx.at, tx.at),
        )  # fmt: skip
        tx.emit(
            "request.created",
            rid,
            {"workflow": d.name, "user": sub.user, "namespace": sub.namespace,
             "definition": d.sha256, "params": dict(sub.params), "priority": sub.priority,
             "approval": sub.approval.as_data()},
        )  # fmt: skip
        _transition(tx, rid, RequestVerb.SUBMIT, Actor.USER, by=sub.by)
        return get_request(tx, rid)

    return op


def _transition(
    tx: Tx,
    rid: str,
    verb: RequestVerb,
    actor: Actor,
    *,
    reason: str | None = None,
    failures: Sequence[str] | None = None,
    by: str | None = None,
) -> Transition:
    record = get_request(tx, rid)
    machine = RequestLifecycle(rid, approval_required=record.approval_required, state=record.state)
    try:
        change = machine.handle(verb, actor=actor)
    except (IllegalTransition, NotPermitted) as exc:
        raise RefusedTransition(str(exc)) from None
    tx.execute(
        "UPDATE requests SET state = ?, updated_at = ?, error = COALESCE(?, error),"
        " failures = COALESCE(?, failures) WHERE id = ?",
        (
            change.after.value,
            tx.at,
            reason,
            None if failures is None else json.dumps(list(failures)),
            rid,
        ),
    )
    data: JsonObject = {
        "verb": verb.value,
        "actor": actor.value,
        "from": change.before.value,
        "to": change.after.value,
    }
    if by:
        data["by"] = by
    if reason:
        data["reason"] = reason
    if failures:
        data["failures"] = list(failures)
    tx.emit("request.state", rid, data)
    return change


def transition(
    rid: str,
    verb: RequestVerb,
    actor: Actor,
    *,
    reason: str | None = None,
    failures: Sequence[str] | None = None,
    by: str | None = None,
    expect: RequestState | None = None,
) -> Callable[[Tx], Transition | None]:
    """Apply ``verb`` by ``actor``; raises ``RefusedTransition`` naming the state.

    With ``expect``, the op does nothing (returns None) unless the request is in that
    state: the engine's own steps use it so that an operator's verb that came first wins.
    """

    def op(tx: Tx) -> Transition | None:
        if expect is not None and get_request(tx, rid).state is not expect:
            return None
        return _transition(tx, rid, verb, actor, reason=reason, failures=failures, by=by)

    return op


def start_request(
    rid: str,
    definition: Definition,
    query_inputs: Sequence[tuple[str, str, Mapping[str, JsonValue]]],
) -> Callable[[Tx], Transition | None]:
    """``start`` an approved request: record its stages (all waiting) and the inputs the
    finder found for the stages that consume the query, in one transaction."""

    def op(tx: Tx) -> Transition | None:
        if get_request(tx, rid).state is not RequestState.APPROVED:
            return None
        change = _transition(tx, rid, RequestVerb.START, Actor.ENGINE)
        for position, stage in enumerate(definition.stages):
            tx.execute(
                "INSERT INTO request_stages (request, stage, position, state) VALUES (?, ?, ?, ?)",
                (rid, stage.name, position, StageState.WAITING.value),
            )
            if stage.consumes is not None and stage.consumes.from_query:
                _add_inputs(tx, rid, stage.name, query_inputs)
        tx.emit("request.inputs", rid, {"query": len(query_inputs)})
        return change

    return op


def _add_inputs(
    tx: Tx, rid: str, stage: str, inputs: Iterable[tuple[str, str, Mapping[str, JsonValue]]]
) -> int:
    rows = [
        (rid, stage, key, seq, path, json.dumps(dict(meta)), InputState.UNALLOCATED.value)
        for seq, (key, path, meta) in enumerate(inputs)
    ]
    tx.executemany(
        "INSERT INTO stage_inputs (request, stage, input, seq, path, metadata, state)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    stamp_content(tx, rid, stage)
    return len(rows)


def stamp_content(tx: Tx, rid: str, stage: str) -> None:
    """Record on a stage's new catalog inputs the sha256 their entry has now."""
    tx.execute(
        "UPDATE stage_inputs SET sha256 = (SELECT c.sha256 FROM catalog c"
        " WHERE 'catalog:' || c.path = stage_inputs.input)"
        " WHERE request = ? AND stage = ? AND sha256 IS NULL AND input LIKE 'catalog:%'",
        (rid, stage),
    )


def add_stage_inputs(
    rid: str, stage: str, inputs: Sequence[tuple[str, str, Mapping[str, JsonValue]]]
) -> Callable[[Tx], int]:
    """Add inputs to a running stage of a standing request, numbered after its last ones;
    keys the stage has already are left as they are. Emits ``request.inputs`` with the
    stage and how many were added (none: no event). Returns that number."""

    def op(tx: Tx) -> int:
        (top,) = tx.execute(
            "SELECT COALESCE(MAX(seq), -1) FROM stage_inputs WHERE request = ? AND stage = ?",
            (rid, stage),
        ).fetchone()
        added = 0
        for key, path, meta in inputs:
            cursor = tx.execute(
                "INSERT OR IGNORE INTO stage_inputs (request, stage, input, seq, path, metadata,"
                " state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rid, stage, key, top + 1 + added, path, json.dumps(dict(meta)),
                 InputState.UNALLOCATED.value),
            )  # fmt: skip
            added += cursor.rowcount
        stamp_content(tx, rid, stage)
        if added:
            tx.emit("request.inputs", rid, {"stage": stage, "added": added})
        return added

    return op


def set_stage(
    rid: str,
    stage: str,
    state: StageState,
    *,
    error: str | None = None,
    inputs: Sequence[tuple[str, str, Mapping[str, JsonValue]]] | None = None,
) -> Callable[[Tx], None]:
    """Move a stage to ``state`` (adding its inputs when it starts), with its event."""

    def op(tx: Tx) -> None:
        stamp = "started_at" if state is StageState.RUNNING else "ended_at"
        tx.execute(
            f"UPDATE request_stages SET state = ?, error = ?, {stamp} = ? WHERE request = ? AND stage = ?",
            (state.value, error, tx.at, rid, stage),
        )
        data: JsonObject = {"stage": stage, "state": state.value}
        if inputs is not None:
            data["inputs"] = _add_inputs(tx, rid, stage, inputs)
        if error:
            data["error"] = error
        tx.emit("request.stage", rid, data)

    return op


# --- reading a request for the service -----------------------------------------------------------


def read_snapshot(rid: str) -> Callable[[Conn], Snapshot]:
    """Everything the service needs for its next steps on ``rid``, in one read."""

    def fn(conn: Conn) -> Snapshot:
        record = get_request(conn, rid)
        (expanded,) = conn.execute(
            "SELECT expanded FROM definitions WHERE sha256 = ?", (record.definition,)
        ).fetchone()
        stages = {
            r[0]: StageRecord(name=r[0], position=r[1], state=StageState(r[2]), error=r[3])
            for r in conn.execute(
                "SELECT stage, position, state, error FROM request_stages WHERE request = ? ORDER BY position",
                (rid,),
            )
        }
        inputs: dict[str, list[StageInput]] = {name: [] for name in stages}
        for r in conn.execute(
            "SELECT stage, input, seq, path, metadata, state, allocations, batch, reason"
            " FROM stage_inputs WHERE request = ? ORDER BY stage, seq",
            (rid,),
        ):
            allocation = InputAllocation(
                input_id=r[1],
                state=InputState(r[5]),
                allocations=r[6],
                job_id=r[7] if r[5] == InputState.ALLOCATED.value else None,
                reason=r[8] or "",
            )
            inputs.setdefault(r[0], []).append(
                StageInput(
                    key=r[1], seq=r[2], path=r[3], metadata=json.loads(r[4]), allocation=allocation
                )
            )
        batches = tuple(
            Batch(
                id=r[0],
                request=rid,
                stage=r[1],
                job=r[2],
                inputs=tuple(json.loads(r[3])),
                output_dir=r[4],
                open=True,
                stop=r[5],
            )  # fmt: skip
            for r in conn.execute(
                "SELECT id, stage, job, inputs, output_dir, stop FROM stage_batches"
                " WHERE request = ? AND state = 'open' ORDER BY id",
                (rid,),
            )
        )
        ended = {}
        for batch in batches:
            if batch.job is None:
                continue
            row = conn.execute(
                f"SELECT kind, state, result, error FROM jobs WHERE id = ?"
                f" AND state IN ({TERMINAL_SQL})",
                (batch.job,),
            ).fetchone()
            if row is not None:
                ended[batch.job] = JobEnd(
                    job_id=batch.job,
                    kind=row[0],
                    state=JobState(row[1]),
                    result=None if row[2] is None else json.loads(row[2]),
                    error=row[3],
                )
        unlinked = tuple(
            r[0]
            for r in conn.execute(
                "SELECT id FROM jobs WHERE request_id = ? AND parent_id IS NULL"
                f" AND state NOT IN ({TERMINAL_SQL})"
                " AND id NOT IN (SELECT job FROM stage_batches WHERE request = ? AND job IS NOT NULL)",
                (rid, rid),
            )
        )
        return Snapshot(
            request=record,
            expanded=json.loads(expanded),
            stages=stages,
            inputs={k: tuple(v) for k, v in inputs.items()},
            batches=batches,
            ended=ended,
            unlinked_jobs=unlinked,
        )

    return fn


def states_entered(rid: str) -> Callable[[Conn], frozenset[RequestState]]:
    """Read: every state ``rid`` has been in, from its ``request.state`` events (its first
    state too: the ``from`` of its first transition); empty before any transition."""

    def fn(conn: Conn) -> frozenset[RequestState]:
        rows = conn.execute(
            "SELECT data FROM events WHERE kind = 'request.state' AND subject = ?", (rid,)
        ).fetchall()
        found: set[RequestState] = set()
        for (text,) in rows:
            data = json.loads(text)
            found.update(RequestState(data[key]) for key in ("from", "to") if key in data)
        return frozenset(found)

    return fn


def live_requests(conn: Conn) -> list[str]:
    """Ids of the requests the service has work for: live states, or open batches."""
    states = tuple(s.value for s in LIVE_STATES)
    marks = ", ".join("?" * len(states))
    rows = conn.execute(
        f"SELECT id FROM requests WHERE state IN ({marks})"
        " UNION SELECT DISTINCT request FROM stage_batches WHERE state = 'open' ORDER BY 1",
        states,
    ).fetchall()
    return [r[0] for r in rows]


def open_jobs(conn: Conn) -> dict[str, str]:
    """``{job id: request id}`` for every job of an open batch."""
    rows = conn.execute(
        "SELECT job, request FROM stage_batches WHERE state = 'open' AND job IS NOT NULL"
    )
    return {r[0]: r[1] for r in rows}


def paused_requests(conn: Conn) -> list[str]:
    """Ids of the requests that are paused: the engine holds their jobs from its start."""
    return [rid for (rid,) in conn.execute("SELECT id FROM requests WHERE state = 'paused'")]


def scripts_in_use(conn: Conn) -> list[tuple[str, str, str]]:
    """``(library key, sha256, text)`` of the stored scripts that live requests (or their
    open batches) use: the engine registers them before it recovers jobs."""
    result: dict[str, tuple[str, str, str]] = {}
    for rid in live_requests(conn):
        record = get_request(conn, rid)
        for entry in record.scripts.values():
            sha = entry.get("sha256")
            if sha and entry["key"] not in result:
                text = script_text(conn, sha)
                if text is not None:
                    result[entry["key"]] = (entry["key"], sha, text)
    return list(result.values())


def script_text(db: Db, sha256: str) -> str | None:
    """The stored text of the RScript with ``sha256``, or None."""
    row = db.execute("SELECT text FROM rscript_texts WHERE sha256 = ?", (sha256,)).fetchone()
    return None if row is None else str(row[0])


@attrs.frozen(kw_only=True)
class StoredDefinition:
    """A definition as stored with the requests made from it."""

    expanded: JsonObject  # the fully expanded definition
    sources: list[str]  # the files it was loaded from
    git: JsonObject | None  # commit, path and dirty flag, when it came from a git checkout


def stored_definition(db: Db, sha256: str) -> StoredDefinition:
    """The definition stored under ``sha256`` (every request's definition is stored)."""
    expanded, sources, git = db.execute(
        "SELECT expanded, sources, git FROM definitions WHERE sha256 = ?", (sha256,)
    ).fetchone()
    return StoredDefinition(
        expanded=json.loads(expanded),
        sources=json.loads(sources),
        git=None if git is None else json.loads(git),
    )


def failed_inputs(conn: Conn, rid: str, stages: Sequence[str]) -> list[str]:
    """The distinct paths of ``rid``'s inputs that failed in one of ``stages``, sorted."""
    marks = ", ".join("?" * len(stages))
    rows = conn.execute(
        "SELECT DISTINCT path FROM stage_inputs WHERE request = ? AND state = ?"
        f" AND stage IN ({marks}) ORDER BY path",
        (rid, InputState.FAILED.value, *stages),
    ).fetchall()
    return [r[0] for r in rows]


def request_namespaces(conn: Conn, *, limit: int = 100_000) -> list[tuple[str, str]]:
    """``(request id, namespace)`` of the ``limit`` newest requests."""
    rows = conn.execute(
        "SELECT id, namespace FROM requests ORDER BY created_at DESC LIMIT ?", (limit,)
    ).fetchall()
    return [(str(r), str(n)) for r, n in rows]
