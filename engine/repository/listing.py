"""What the CLI lists: runnable actions and RScripts with their parameters, jobs found by
filters, and a job's tree of descendants.

The describe functions are plain (they read the loaded libraries); the job functions return
read functions for ``Repository.read``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from wfe.engine.errors import EngineError, UnknownJob
from wfe.engine.repository.jobs import JOB_COLUMNS, JobState, job_from_row, job_view
from wfe.engine.repository.rowtypes import Conn, JsonObject, JsonValue, Row
from wfe.rscripts.header import MISSING

if TYPE_CHECKING:
    from wfe.engine.runtime.tasklets import ActionLibrary
    from wfe.rscripts.loader import ScriptLibrary

#: Most jobs one tree answer holds (a deeper or wider tree is cut, and says so).
TREE_LIMIT = 2000


def first_line(text: str | None) -> str:
    """The first non-empty line of a docstring, stripped ("" when none)."""
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def describe_actions(library: ActionLibrary) -> list[JsonObject]:
    """Every action the engine can run: name, parameters (name, type) and the first line of
    its first documented tasklet. An action that does not load is listed with its error."""
    found: list[JsonObject] = []
    for name in library.names():
        try:
            action = library.get(name)
        except EngineError as exc:
            found.append({"name": name, "params": [], "doc": "", "error": str(exc)})
            continue
        doc = next(
            (
                first_line(t.main.__globals__.get("__doc__"))
                for t in action.tasklets
                if first_line(t.main.__globals__.get("__doc__"))
            ),
            "",
        )
        found.append(
            {
                "name": name,
                "params": [
                    {"name": key, "type": kind.__name__, "required": False, "default": None}
                    for key, kind in action.params.items()
                ],
                "doc": doc,
                "tasklets": [t.name.split("/", 1)[1] for t in action.tasklets],
            }
        )
    return found


def describe_rscripts(library: ScriptLibrary) -> list[JsonObject]:
    """Every RScript the engine can dispatch: name, version, interpreter, parameters (name,
    type, required, default, description) and the first line of its description."""
    found: list[JsonObject] = []
    for name in sorted(library.names()):
        header = library.get(name).header
        found.append(
            {
                "name": name,
                "version": header.version,
                "interpreter": header.interpreter,
                "params": [
                    {
                        "name": spec.name,
                        "type": spec.type.value,
                        "required": spec.required,
                        "default": None if spec.default is MISSING else spec.default,
                        "description": spec.description,
                    }
                    for spec in header.params
                ],
                "doc": first_line(header.description),
            }
        )
    return found


def _row(row: Row) -> JsonObject:
    return job_view(job_from_row(row), "request")


def find_jobs(
    *,
    limit: int,
    states: tuple[JobState, ...] = (),
    name: str | None = None,
    since: float | None = None,
    root_only: bool = True,
    shape: Callable[[Row], JsonObject] | None = None,
) -> Callable[[Conn], list[JsonObject]]:
    """Jobs newest first: at most ``limit``, in one of ``states`` (any when empty), whose
    name matches the glob ``name`` (``demo.*``), created at or after ``since`` (epoch s);
    each row as ``shape`` makes it (default: the listing's columns)."""
    make = shape or _row

    def fn(conn: Conn) -> list[JsonObject]:
        where: list[str] = []
        args: list[JsonValue] = []
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        if name is not None:
            where.append("name GLOB ?")
            args.append(name)
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if root_only:
            where.append("parent_id IS NULL")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [make(r) for r in rows]

    return fn


def job_tree(job_id: str, *, limit: int = TREE_LIMIT) -> Callable[[Conn], JsonObject]:
    """``job_id`` and its descendants as nested ``children`` lists (in call order), each with
    its last attempt's agent and exit code. Raises ``UnknownJob``. At most ``limit`` jobs are
    read; ``truncated`` says when there were more."""

    def fn(conn: Conn) -> JsonObject:
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id}")
        top = _row(row)
        nodes = {job_id: top}
        kids: dict[str, list[JsonValue]] = {job_id: []}
        top["children"] = kids[job_id]
        frontier, count, truncated = [job_id], 1, False
        while frontier and not truncated:
            marks = ", ".join("?" * len(frontier))
            rows = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE parent_id IN ({marks})"
                " ORDER BY parent_id, call_seq, id",
                frontier,
            ).fetchall()
            frontier = []
            for r in rows:
                if count >= limit:
                    truncated = True
                    break
                child = _row(r)
                child_id, parent_id = str(child["id"]), str(child["parent"])
                kids[child_id] = []
                child["children"] = kids[child_id]
                kids[parent_id].append(child)
                nodes[child_id] = child
                frontier.append(child_id)
                count += 1
        for node in nodes.values():
            last = conn.execute(
                "SELECT agent, exit_code, duration FROM attempts WHERE job_id = ?"
                " ORDER BY attempt DESC LIMIT 1",
                (node["id"],),
            ).fetchone()
            node["agent"], node["exit_code"], node["duration"] = last or (None, None, None)
        top["truncated"] = truncated
        return top

    return fn
