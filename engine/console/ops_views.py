"""Console operations for the web console's views (issue 17): server-side search, attempt
timelines, a request's legal verbs, and comments on requests.

Registered with ``@op`` when ``wfe.engine.console.api`` imports this module.

* ``search``: one page of jobs, requests or events with filters and the total, so a page's
  history is never limited to what arrived since it loaded.
* ``timeline``: the attempts of a root's tree or of a request's jobs, for a Gantt per agent.
* ``lifecycle``: the verbs an operator may issue on a request now, derived from the
  protocol's ``TRANSITIONS`` and ``ACTORS`` (the page offers these and no others), and the
  whole table for reference.
* ``request.graph``: a request's stages with their upstream stages and its expanded
  definition, for the stage DAG.
* ``agent.history``: an agent's recorded state changes and when it was last heard.
* ``activity``: RScript jobs ended, queued and running over a time window, for the plots.
* ``comment``: an operator's comment on a request, recorded as a ``request.comment`` event
  (the page sends one with an approval).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from wfe.engine.console.protocol import BAD_REQUEST, ApiError
from wfe.engine.console.registry import arg, epoch_seconds, op, string_list
from wfe.engine.repository.search import KINDS, MAX_PAGE, Kind, SearchQuery
from wfe.protocols.request import ACTORS, TRANSITIONS, Actor, RequestState

if TYPE_CHECKING:
    from wfe.engine.console.session import Session

#: The longest comment kept.
MAX_COMMENT = 2000


def search_query(args: dict[str, Any]) -> SearchQuery:
    """The ``SearchQuery`` of a ``search`` request's ``args``; ``ApiError`` naming a bad one."""
    kind = arg(args, "kind", str)
    if kind not in KINDS:
        raise ApiError(BAD_REQUEST, f"args.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    limit = arg(args, "limit", int, 50)
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(BAD_REQUEST, f"args.limit: must be 1..{MAX_PAGE}, got {limit}")
    offset = arg(args, "offset", int, 0)
    if offset < 0:
        raise ApiError(BAD_REQUEST, f"args.offset: must be 0 or more, got {offset}")
    return SearchQuery(
        kind=cast("Kind", kind),
        states=string_list(args, "state"),
        name=arg(args, "name", str, None) or None,
        namespace=arg(args, "namespace", str, None) or None,
        user=arg(args, "user", str, None) or None,
        text=arg(args, "text", str, None) or None,
        since=epoch_seconds(args, "since"),
        until=epoch_seconds(args, "until"),
        root_only=arg(args, "root_only", bool, False),
        limit=limit,
        offset=offset,
    )


@op("search", role="viewer")
async def _search(session: Session, args: dict[str, Any]) -> Any:
    """kind (jobs, requests, events), state (one or an array), name, namespace, user, text,
    since, until, root_only, limit (50), offset (0) → {kind, rows, total, offset, limit}."""
    return await session.engine.search(search_query(args))


@op("timeline", role="viewer")
async def _timeline(session: Session, args: dict[str, Any]) -> Any:
    """job (its root's tree) or request → {attempts, truncated}, oldest first."""
    if ("job" in args) == ("request" in args):
        raise ApiError(BAD_REQUEST, "give exactly one of args.job and args.request")
    if "job" in args:
        return await session.engine.timeline(root=arg(args, "job", str))
    return await session.engine.timeline(request=arg(args, "request", str))


def operator_verbs(state: RequestState) -> list[str]:
    """The verbs an operator may issue in ``state``, in the protocol table's order."""
    return [v.value for v in TRANSITIONS[state] if Actor.OPERATOR in ACTORS[v]]


@op("lifecycle", role="viewer")
async def _lifecycle(session: Session, args: dict[str, Any]) -> Any:
    """request → {request, state, verbs} (what an operator may do now); none → {table}: per
    state the verbs an operator may issue."""
    if "request" not in args:
        return {"table": {s.value: operator_verbs(s) for s in RequestState}}
    rid = arg(args, "request", str)
    detail = await session.engine.request_detail(rid)
    state = RequestState(str(detail["state"]))
    return {"request": rid, "state": state.value, "verbs": operator_verbs(state)}


@op("request.graph", role="viewer")
async def _request_graph(session: Session, args: dict[str, Any]) -> Any:
    """request → {request, stages, expanded}: each stage's ``depends_on`` (``after`` and the
    stage it consumes), ``from_query``, ``rscript``/``action``; the expanded definition."""
    return await session.engine.request_graph(arg(args, "request", str))


@op("agent.history", role="viewer")
async def _agent_history(session: Session, args: dict[str, Any]) -> Any:
    """agent → {name, state, first_seen, last_seen, heard_ago, events}: its recorded state
    changes (connected, lost, reconnected), newest first, and seconds since last heard."""
    return await session.engine.agent_history(arg(args, "agent", str))


@op("activity", role="viewer")
async def _activity(session: Session, args: dict[str, Any]) -> Any:
    """since, until (epoch seconds), buckets (60, 1..500) → {since, until, step, ended,
    queued, running}: RScript jobs ended per step by state, queued and running at each step's end."""
    since, until = epoch_seconds(args, "since"), epoch_seconds(args, "until")
    if since is None or until is None or not since < until:
        raise ApiError(
            BAD_REQUEST, "args.since and args.until: expected numbers with since < until"
        )
    buckets = arg(args, "buckets", int, 60)
    if not 1 <= buckets <= MAX_PAGE:
        raise ApiError(BAD_REQUEST, f"args.buckets: must be 1..{MAX_PAGE}, got {buckets}")
    return await session.engine.activity(since=since, until=until, buckets=buckets)


@op("comment", role="operator")
async def _comment(session: Session, args: dict[str, Any]) -> Any:
    """request, text → {request, text, by}: recorded as a ``request.comment`` event."""
    rid = arg(args, "request", str)
    text = arg(args, "text", str).strip()
    if not text or len(text) > MAX_COMMENT:
        raise ApiError(BAD_REQUEST, f"args.text: expected 1 to {MAX_COMMENT} characters")
    await session.engine.comment_request(rid, text, by=session.name)
    return {"request": rid, "text": text, "by": session.name}


@op("definition_params", role="viewer")
async def _definition_params(session: Session, args: dict[str, Any]) -> Any:
    """The parameters a one-file definition (TOML text) declares, for the page's submit form:
    name, type, default, required, description; a definition that does not load is refused
    with its one-line error."""
    import tomllib

    from wfe.engine.definitions import build_definition
    from wfe.engine.definitions.errors import InvalidDefinition

    try:
        expanded = tomllib.loads(arg(args, "toml", str))
    except tomllib.TOMLDecodeError as exc:
        raise ApiError(BAD_REQUEST, f"args.toml: {exc}") from None
    if "includes" in expanded:
        raise ApiError(
            BAD_REQUEST, "a definition with includes needs its files: use `wfe submit FILE`"
        )
    try:
        definition = build_definition(expanded)
    except InvalidDefinition as exc:
        raise ApiError(BAD_REQUEST, f"definition: {exc}") from None
    return [
        {
            "name": name,
            "type": spec.type.value,
            "default": spec.default,
            "required": spec.default is None,
            "description": spec.description,
        }
        for name, spec in sorted(definition.params.items())
    ]
