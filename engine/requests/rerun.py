"""``wfe rerun REQUEST``: run a request's failed inputs again, as a new request.

A request that has ended stays as it ended (its lifecycle is final, docs/definitions.md).
A rerun submits a new request of the same workflow, user, parameters, namespace, priority
and scripts (the exact texts stored with the first), whose definition is the first one with
one more ``[[query.where]]`` rule: ``path in [the inputs that failed]``. So only the catalog
inputs that failed in a stage fed by the query run again, through every stage, and the new
request is approved, checked and recorded like any other. Its definition (a new sha256)
shows the restriction; two events link the pair: ``request.rerun`` on the first (the new
id, the inputs, who asked) and ``request.rerun_of`` on the new one.

Refused with one line: a request that has not ended, one with no query-fed stage, and one
with no failed input there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from wfe.engine.definitions import build_definition
from wfe.engine.errors import EngineError
from wfe.engine.repository import requests as store
from wfe.engine.repository.rowtypes import Conn, JsonObject, JsonValue
from wfe.engine.repository.writer import Tx
from wfe.protocols.request import RequestState

if TYPE_CHECKING:
    from wfe.engine.requests import RequestService

ENDED = frozenset(
    {RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELLED, RequestState.ARCHIVED}
)


class RerunRefused(EngineError):
    """The request can't be rerun (not ended, no query, nothing failed)."""


@attrs.frozen(kw_only=True)
class RerunPlan:
    """What the new request is made from."""

    request: str
    user: str
    namespace: str
    priority: int
    params: dict[str, JsonValue]
    expanded: JsonObject  # the first request's definition with the extra rule
    sources: list[str]
    git: JsonObject | None
    scripts: dict[str, str]  # name -> text, as stored with the first request
    inputs: list[str]  # paths of the failed inputs


def plan_rerun(rid: str) -> Callable[[Conn], RerunPlan]:
    """A read function: the ``RerunPlan`` for request ``rid``. Raises ``UnknownRequest``
    or ``RerunRefused``."""

    def fn(conn: Conn) -> RerunPlan:
        record = store.get_request(conn, rid)
        if record.state not in ENDED:
            raise RerunRefused(
                f"request {rid} is {record.state.value}: only a request that has ended can be rerun"
            )
        stored = store.stored_definition(conn, record.definition)
        expanded = stored.expanded
        definition = build_definition(expanded)
        fed = [
            s.name for s in definition.stages if s.consumes is not None and s.consumes.from_query
        ]
        if definition.query is None or not fed:
            raise RerunRefused(f"request {rid} has no stage fed by a [query]: nothing to rerun")
        inputs = store.failed_inputs(conn, rid, fed)
        if not inputs:
            raise RerunRefused(f"request {rid} has no failed input to rerun")
        texts = {}
        for name, entry in record.scripts.items():
            if entry.get("sha256"):
                text = store.script_text(conn, entry["sha256"])
                if text is not None:
                    texts[name] = text
        narrowed = copy.deepcopy(expanded)
        query = narrowed.setdefault("query", {})
        assert isinstance(query, dict)  # build_definition accepted it: [query] is a table
        where = query.setdefault("where", [])
        assert isinstance(where, list)  # and its rules a list
        where.append({"field": "path", "op": "in", "value": list[JsonValue](inputs)})
        return RerunPlan(
            request=rid,
            user=record.user,
            namespace=record.namespace,
            priority=record.priority,
            params=dict(record.params),
            expanded=narrowed,
            sources=stored.sources,
            git=stored.git,
            scripts=texts,
            inputs=inputs,
        )

    return fn


async def rerun_request(service: RequestService, rid: str, *, by: str | None) -> dict[str, Any]:
    """Submit the rerun of ``rid`` (see the module doc); return the new request's id, state
    and the inputs it runs. Raises ``UnknownRequest``, ``RerunRefused`` or the submission's
    own errors (nothing stored then)."""
    plan = await service.repo.read(plan_rerun(rid))
    record = await service.submit(
        expanded=plan.expanded,
        user=plan.user,
        sources=plan.sources,
        git=plan.git,
        scripts_text=plan.scripts,
        params=plan.params,
        namespace=plan.namespace,
        priority=plan.priority,
        by=by,
    )

    def link(tx: Tx) -> None:
        tx.emit("request.rerun", rid, {"request": record.id, "inputs": plan.inputs, "by": by})
        tx.emit("request.rerun_of", record.id, {"request": rid, "by": by})

    await service.repo.write(link)
    return {"request": record.id, "of": rid, "state": record.state.value, "inputs": plan.inputs}
