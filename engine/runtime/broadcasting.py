"""``ctx.publish``: check a broadcast, record it once, deliver it, and start its reactors.

A broadcast is recorded by ``wfe.engine.repository.broadcasts`` as the event
``broadcast.<topic>``, numbered by the ``broadcast`` counter, and as the publishing job's call
(so that a tasklet replayed after a restart does not publish again). Once committed it goes
to the agents of its namespace that react to its topic (``AgentController.broadcast``), and
the definition's ``[reactors]`` for its topic start as child actions of the publishing job,
the message their parameters: jobs like any other, found again by their call number when the
tasklet is replayed, so a reaction runs once. In a simulated execution (``wfe simulate``) the
event also carries the execution and its simulation time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from wfe.engine.repository import broadcasts
from wfe.protocols.broadcasts import topic_problem
from wfe.protocols.messages import Broadcast

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController
    from wfe.engine.runtime.actions import Context, Run

#: The largest message, as JSON.
MAX_MESSAGE_BYTES = 64 * 1024


def check(topic: str, message: object) -> None:
    """Raise ``ValueError`` (one line) unless ``topic`` and ``message`` can be published."""
    problem = topic_problem(topic)
    if problem:
        raise ValueError(f"publish: {problem}")
    if not isinstance(message, dict):
        raise ValueError(
            f"publish: the message must be a JSON object, not {type(message).__name__}"
        )
    try:
        size = len(json.dumps(message, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"publish: the message is not JSON: {exc}") from None
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"publish: the message is {size} bytes; at most {MAX_MESSAGE_BYTES}")


def reactors_of(expanded: Mapping[str, Any]) -> Mapping[str, str]:
    """The ``[reactors]`` table of an expanded (checked) definition: topic -> action."""
    table = expanded.get("reactors")
    return dict(table) if isinstance(table, dict) else {}


async def publish(
    ctx: Context,
    run: Run,
    topic: str,
    message: dict[str, Any],
    *,
    call_seq: int,
    controller: AgentController,
) -> None:
    """``ctx.publish`` as ``run``'s call ``call_seq`` (``topic`` and ``message`` checked by
    ``check`` first); see the module docstring."""
    namespace, reactors = await _scope(ctx, run)
    extra: dict[str, Any] = {}
    subject = ctx.job_id
    if run.sim is not None:
        execution = run.sim.execution
        subject = execution.id
        extra = {"job": ctx.job_id, "execution": execution.id, "sim_time": execution.now()}
    number = await ctx.repo.write(
        broadcasts.publish(
            topic,
            message,
            namespace=namespace,
            job=ctx.job_id,
            call_seq=call_seq,
            subject=subject,
            extra=extra,
        )
    )
    if run.sim is not None and number is not None:
        run.sim.execution.messages[topic] += 1
    if number is not None:
        controller.broadcast(
            Broadcast(seq=number, namespace=namespace, topic=topic, message=message)
        )
    reactor = reactors.get(topic)
    if reactor is not None:  # replayed: finds the reaction it started the first time
        await ctx.start_action(reactor, **message)


async def _scope(ctx: Context, run: Run) -> tuple[str, Mapping[str, str]]:
    """The namespace a job's broadcasts go to, and its definition's reactors (read once per
    root run)."""
    root = run
    while root.parent is not None:
        root = root.parent
    if root.broadcast_scope is None:
        root.broadcast_scope = await _read_scope(ctx, root)
    return root.broadcast_scope


async def _read_scope(ctx: Context, root: Run) -> tuple[str, Mapping[str, str]]:
    if root.sim is not None:
        execution = root.sim.execution
        return execution.namespace, execution.reactors
    request = root.job.request_id
    if request is None:
        return "", {}
    from wfe.engine.repository.requests import get_request, stored_definition
    from wfe.engine.repository.shares import request_share

    def read(db: Any) -> tuple[str, Mapping[str, str]]:
        namespace = request_share(request)(db)[0]
        expanded = stored_definition(db, get_request(db, request).definition).expanded
        return namespace, reactors_of(expanded)

    scope: tuple[str, Mapping[str, str]] = await ctx.repo.read(read)
    return scope
