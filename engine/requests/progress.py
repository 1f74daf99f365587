"""The steps that move a request's stages forward, for the requests service: start a
request (find its query's inputs), start, skip and end its stages, choose what a
standing stage may run now, and check it once every stage has ended. Each reads and writes through the repository; the decisions are
the pure functions of ``plan`` and ``checking``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wfe.engine.definitions import Definition, OnStageFailure, downstream
from wfe.engine.repository import requests as store
from wfe.engine.repository import standing as standing_store
from wfe.engine.repository.products import list_products
from wfe.engine.requests import catalog, checking, plan, standing
from wfe.engine.requests.model import ONCE, Batch, Snapshot, StageInput, StageState
from wfe.engine.requests.standing_service import upstream_products
from wfe.protocols.request import Actor, RequestState, RequestVerb

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController
    from wfe.engine.repository import Repository
    from wfe.engine.requests.batches import BatchRunner
    from wfe.engine.requests.standing_clock import StandingClock

log = logging.getLogger("wfe.requests")


async def start_request(repo: Repository, rid: str, definition: Definition) -> None:
    """Record the query's inputs and the stages, and start the (approved) request; fail it
    when its query matched nothing (a standing request waits for entries instead)."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    if definition.query is not None:
        found = await repo.read(catalog.find(definition.query))
    if definition.query is not None and not found and not definition.standing:
        reason = "the query matched no catalog entries (see `wfe catalog ls`)"
        await repo.write(
            store.transition(
                rid, RequestVerb.FAIL, Actor.ENGINE, reason=reason, expect=RequestState.APPROVED
            )
        )
        return
    await repo.write(store.start_request(rid, definition, found))


async def settle_batches(
    batches: BatchRunner, controller: AgentController, snap: Snapshot, definition: Definition
) -> tuple[bool, list[str], bool]:
    """Settle the request's ended batches and abandon those whose job was never recorded;
    cancel the live jobs no batch names (orphaned by an engine restart). Returns whether
    anything changed, the jobs whose batch settled, and whether any made products."""
    changed = made = False
    settled: list[str] = []
    for batch in snap.batches:
        if batch.job is None:
            await batches.abandon(definition, batch)
            changed = True
        elif batch.job in snap.ended:
            products = await batches.settle(snap.request, definition, batch, snap.ended[batch.job])
            made = made or bool(products)
            settled.append(batch.job)
            changed = True
    for job_id in snap.unlinked_jobs:
        if job_id in controller.jobs:
            log.warning(
                "request %s: cancelling job %s, which no batch names", snap.request.id, job_id
            )
            await controller.cancel(job_id, reason="orphaned by an engine restart")
    return changed, settled, made


async def advance_stages(repo: Repository, snap: Snapshot, definition: Definition) -> bool:
    """Start, skip and end stages; True if any changed."""
    rid = snap.request.id
    states = {name: s.state for name, s in snap.stages.items()}
    fail_fast = definition.policy.on_stage_failure is OnStageFailure.FAIL
    for name, record in snap.stages.items():
        if record.state is not StageState.RUNNING:
            continue
        open_batches = sum(1 for b in snap.batches if b.stage == name)
        ended = plan.stage_end(snap.inputs.get(name, ()), open_batches, fail_fast=fail_fast)
        if ended is not None:
            await repo.write(store.set_stage(rid, name, ended[0], error=ended[1] or None))
            return True
    changed = False
    for name, new in plan.stage_changes(definition, states).items():
        if new is StageState.SKIPPED:
            failed = [
                d for d in definition.stage(name).depends_on if states[d] is not StageState.DONE
            ]
            why = f"upstream stage {failed[0]!r} {states[failed[0]].value}" if failed else ""
            await repo.write(store.set_stage(rid, name, new, error=why or None))
            states[name] = new
            changed = True
            continue
        stage = definition.stage(name)
        inputs: list[tuple[str, str, dict[str, Any]]] | None = None
        if stage.consumes is None:
            inputs = [(ONCE, "", {})]
        elif not stage.consumes.from_query:
            inputs = await repo.read(
                upstream_products(rid, stage.consumes.source, stage.consumes.types)
            )
        await repo.write(store.set_stage(rid, name, new, inputs=inputs))
        return True
    return changed


async def end_request(repo: Repository, snap: Snapshot, definition: Definition) -> bool:
    """Fail the request when a stage failed under the "fail" policy, or send a running one
    with no open batch to ``checking`` once every stage has ended; True if it changed."""
    rid, state = snap.request.id, snap.request.state
    states = {name: s.state for name, s in snap.stages.items()}
    errors = {name: s.error or "" for name, s in snap.stages.items()}
    decision = plan.request_next(definition, states, errors)
    if decision is None:
        return False
    verb, reason = decision
    if verb is RequestVerb.FAIL:
        await repo.write(store.transition(rid, verb, Actor.ENGINE, reason=reason, expect=state))
        return True
    if state is RequestState.RUNNING and not snap.batches:
        await repo.write(store.transition(rid, verb, Actor.ENGINE, expect=RequestState.RUNNING))
        return True
    return False


async def check_request(repo: Repository, rid: str, definition: Definition) -> None:
    """Re-hash every product (on worker threads) and check the inputs, then complete or
    fail the request (in ``checking``); raises ``RefusedTransition`` if it left it."""
    snap = await repo.read(store.read_snapshot(rid))
    problems = checking.input_problems(definition, snap.stages, snap.inputs)
    products = await repo.read(list_products(rid))
    products = [p for p in products if not p.get("purged_at")]  # purged: no file
    problems += checking.product_problems(products, await checking.rehash(products))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        await repo.write(
            store.transition(
                rid,
                RequestVerb.FAIL,
                Actor.ENGINE,
                reason=f"checking failed: {problems[0]}{more}",
                failures=problems,
                expect=RequestState.CHECKING,
            )
        )
        return
    states = {name: s.state for name, s in snap.stages.items()}
    errors = {name: s.error or "" for name, s in snap.stages.items()}
    failures = plan.stage_failures(definition, states, errors)
    await repo.write(
        store.transition(
            rid,
            RequestVerb.COMPLETE,
            Actor.ENGINE,
            failures=failures,
            expect=RequestState.CHECKING,
        )
    )


async def open_batches(
    batches: BatchRunner, clock: StandingClock, snap: Snapshot, definition: Definition
) -> tuple[list[Batch], bool]:
    """Open batches of the waiting inputs of each running stage (a standing stage's when
    its window allows) and start their jobs. Returns the batches opened and whether
    anything changed (then the request is looked at again)."""
    opened: list[Batch] = []
    changed = False
    for name, record in snap.stages.items():
        if record.state is not StageState.RUNNING:
            continue
        stage = definition.stage(name)
        inputs: Sequence[StageInput] = snap.inputs.get(name, ())
        if definition.standing:
            chosen, regenerated = await standing_inputs(
                batches.repo, clock, snap, definition, name, inputs
            )
            changed = changed or regenerated
            if chosen is None:
                continue
            inputs = chosen
        for chunk in plan.batches_to_make(inputs, stage.max_inputs, stage.group_by):
            opened.append(await batches.start(snap.request, definition, stage, chunk))
            changed = True
    return opened, changed


async def standing_inputs(
    repo: Repository,
    clock: StandingClock,
    snap: Snapshot,
    definition: Definition,
    name: str,
    inputs: Sequence[StageInput],
) -> tuple[Sequence[StageInput] | None, bool]:
    """The inputs a standing request's stage ``name`` may open batches of now (None: none,
    as nothing waits or its cooldown window is still open), and whether purged inputs it
    needs were sent back to be made again (then the request is looked at again)."""
    stage = definition.stage(name)
    rid = snap.request.id
    if stage.group_by:  # a sub-group with a job running waits for it
        inputs = standing.idle(inputs, stage.group_by)
    if not clock.may_start(rid, name, cooldown=stage.cooldown, gap=len(standing.gap(inputs))):
        return None, False
    if stage.group_by:  # a sub-group that grew runs again whole
        again = standing.regroup(inputs, stage.group_by)
        if again:
            await repo.write(
                standing_store.rerun_group(rid, name, again, downstream(definition, name))
            )
            inputs = standing.reopened(inputs, again)
    purged = await repo.read(
        standing_store.purged_inputs(rid, [i.key for i in standing.gap(inputs)])
    )
    if purged:  # needed again but purged: its stage makes it again first
        below = {n: downstream(definition, n) for n in definition.stage_names}
        regenerated = bool(await repo.write(standing_store.regenerate(rid, purged, below)))
        return None, regenerated
    return inputs, False
