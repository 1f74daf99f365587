"""The requests service: a long-lived task in the engine's root nursery that runs requests.

Theory of operation
-------------------
The service is level-triggered. Everything it knows is in the repository; what it keeps
in memory (which jobs belong to which request, timers, the checks in flight) it can
rebuild at any time. A request is *poked* when something about it may have changed: an
operator's verb, a submission, one of its jobs ending (the service subscribes to the
committed ``job.state`` events), a timer, or a gap in the event stream (then every live
request is poked). For a poked request it reads a ``Snapshot`` and takes the next step:

* settle the batches whose job has ended (products, inputs processed/released/withdrawn);
* submitted: approve by policy (the engine's ``approve`` is refused when a person must);
* approved: ask the finder for the query's inputs, record the stages, ``start``;
* running or paused: start, skip and end stages (``plan``); fail the request when a stage
  failed under the "fail" policy; ``check`` when every stage has ended; and, only while
  running, open batches of unallocated inputs and start their jobs. Paused: cancel the
  jobs no agent has now, queued or waiting to be retried (their inputs are withdrawn, not
  counted; a job's requeue for a retry pokes its request). The controller holds a paused
  request (``hold_request``), so none of its jobs is dispatched before they are cancelled;
* checking: re-hash every product on worker threads, then ``complete`` or ``fail``;
* failed or cancelled: stop every job still running.

Each step writes, then pokes the request again, until a step finds nothing to do. An
engine restart loses nothing: the next start pokes every live request, cancels jobs no
batch names, settles batches whose job was never recorded, and re-arms stage timeouts
(from the restart: the elapsed part before it is not kept).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from wfe.engine.config import ApprovalSection, StorageSection
from wfe.engine.definitions import (
    Definition,
    GitInfo,
    OnStageFailure,
    build_definition,
    downstream,
    resolve_params,
)
from wfe.engine.repository import Missed, Subscription
from wfe.engine.repository import requests as store
from wfe.engine.repository import standing as standing_store
from wfe.engine.repository.products import list_products
from wfe.engine.repository.rowtypes import JsonObject, JsonValue
from wfe.engine.requests import catalog, checking, plan, scripts, standing
from wfe.engine.requests.approval import decide_approval
from wfe.engine.requests.batches import BatchRunner
from wfe.engine.requests.errors import RefusedTransition, RequestError, SubmitError
from wfe.engine.requests.model import (
    ONCE,
    Batch,
    RequestRecord,
    Snapshot,
    StageInput,
    StageState,
)
from wfe.engine.requests.purge import Purger
from wfe.engine.requests.standing_clock import StandingClock
from wfe.engine.requests.standing_service import StandingRequests, action_known, upstream_products
from wfe.engine.runtime.actions import one_line
from wfe.engine.runtime.jobs import TERMINAL
from wfe.protocols.errors import ProtocolError
from wfe.protocols.request import (
    TERMINAL_STATES,
    TRANSITIONS,
    Actor,
    RequestLifecycle,
    RequestState,
    RequestVerb,
    Transition,
    check_user_name,
)

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController
    from wfe.engine.repository import Repository
    from wfe.engine.runtime.actions import ActionRunner
    from wfe.rscripts.loader import ScriptLibrary

log = logging.getLogger("wfe.requests")

_S = RequestState


class RequestService:
    """Submits requests, drives their lifecycle and runs their stages. See the module doc."""

    def __init__(
        self,
        *,
        repo: Repository,
        controller: AgentController,
        runner: ActionRunner | None = None,
        products_root: Path | None = None,
        approval: ApprovalSection | None = None,
        storage: StorageSection | None = None,
    ) -> None:
        self.repo = repo
        self.approval = ApprovalSection() if approval is None else approval  # [approval]
        self.controller = controller
        self.runner = runner
        self.batches = BatchRunner(
            repo=repo, controller=controller, runner=runner, products_root=products_root
        )
        self._definitions: dict[str, Definition] = {}
        self._standing: dict[str, Definition] = {}  # live standing requests' definitions
        self._jobs: dict[str, str] = {}  # job id -> request id, for the jobs of open batches
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self._timers: list[tuple[float, int, str, str, float]] = []  # (at, seq, job, kind, seconds)
        self._armed: set[str] = set()
        self._deferred: dict[str, tuple[str, float]] = {}  # job -> stage timer to fire on requeue
        self._seq = itertools.count()
        self._checking: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self.standing = StandingClock(self.poke)  # cron ticks, cooldowns, catalog refreshes
        self.standing_requests = StandingRequests(self)
        storage = StorageSection() if storage is None else storage
        self.purger = Purger(repo, quota=storage.quota_bytes, purge_at=storage.purge_at)
        self.steps = 0

    @property
    def scripts(self) -> ScriptLibrary:
        return self.controller.scripts

    # --- life ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: pick up every live request, then follow what happens."""
        async with self.repo.subscribe() as events, trio.open_nursery() as nursery:
            self._nursery = nursery
            self._jobs = await self.repo.read(store.open_jobs)
            self._dirty.update(await self.repo.read(store.live_requests))
            self._wake.set()
            nursery.start_soon(self._listen, events, name="requests: events")
            nursery.start_soon(self._loop, name="requests: steps")
            await nursery.start(self.standing.run)
            task_status.started()

    def statistics(self) -> dict[str, int]:
        return {
            "request_steps": self.steps,
            "request_jobs": len(self._jobs),
            "requests_checking": len(self._checking),
        }

    def poke(self, rid: str) -> None:
        """Have the service look at ``rid`` again soon."""
        self._dirty.add(rid)
        self._wake.set()

    async def _listen(self, events: Subscription) -> None:
        """Poke the requests whose jobs ended or were requeued: one wakeup per committed
        batch of events, however many it holds."""
        while items := await events.receive_batch():
            missed = catalog_changed = False
            for event in items:
                if isinstance(event, Missed):
                    missed = True
                elif event.kind in ("catalog.added", "catalog.updated"):
                    catalog_changed = True
                elif event.kind == "job.state" and (
                    event.data.get("state") in TERMINAL or "retry_after" in event.data
                ):  # a job ended, or waits to be retried (a paused request holds it back)
                    self._job_changed(event.subject)
            if catalog_changed or missed:  # standing requests look at their query again
                self.standing.catalog_changed()
            if missed:
                for rid in await self.repo.read(store.live_requests):
                    self.poke(rid)

    def _job_changed(self, job_id: str) -> None:
        owner = self._jobs.get(job_id)
        if owner is not None:
            self.poke(owner)
        deferred = self._deferred.pop(job_id, None)
        if deferred is not None:
            heapq.heappush(self._timers, (trio.current_time(), next(self._seq), job_id, *deferred))
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            with trio.move_on_at(self._timers[0][0] if self._timers else math.inf):
                await self._wake.wait()
            self._wake = trio.Event()
            await self._fire_timers()
            dirty, self._dirty = self._dirty, set()
            for rid in sorted(dirty):
                self.steps += 1
                try:
                    await self._step(rid)
                except Exception as exc:  # a bug must not stop every other request
                    log.exception("request %s: step failed", rid)
                    await self._engine_fail(rid, f"engine error: {one_line(exc)}")

    async def _engine_fail(self, rid: str, reason: str) -> None:
        try:
            await self.repo.write(
                store.transition(rid, RequestVerb.FAIL, Actor.ENGINE, reason=reason)
            )
        except (RequestError, LookupError):
            return
        self.poke(rid)

    # --- what callers ask ------------------------------------------------------------------

    async def submit(
        self,
        *,
        expanded: Mapping[str, Any],
        user: str,
        sources: Collection[str] = (),
        git: Mapping[str, Any] | None = None,
        scripts_text: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        priority: int = 0,
        by: str | None = None,
    ) -> RequestRecord:
        """Check and store a request of the expanded definition; return it (submitted).

        ``by`` is who submits (a console token's name), recorded on the submit event; without
        it, the request's ``user``.

        Raises ``DefinitionError`` / ``SubmitError`` with one line before anything is
        stored. The engine approves at once when no person's approval is needed: what
        ``[approval]`` of wfe.toml says for the namespace, else the definition's policy
        (``wfe.engine.requests.approval``).
        """
        try:
            check_user_name(user)
        except ProtocolError as exc:
            raise SubmitError(str(exc)) from None
        gitinfo = None
        if git:
            try:
                gitinfo = GitInfo(
                    commit=str(git["commit"]), path=str(git["path"]), dirty=bool(git["dirty"])
                )
            except (KeyError, TypeError):
                raise SubmitError("git: expected commit, path and dirty") from None
        definition = build_definition(expanded, sources=tuple(str(s) for s in sources), git=gitinfo)
        resolved = resolve_params(definition, dict(params or {}))
        namespace = definition.namespace if namespace is None else namespace
        if not namespace or not all(c.isalnum() or c in "_.-" for c in namespace):
            raise SubmitError(f"namespace {namespace!r}: use letters, digits, '_', '.' and '-'")
        bundled = scripts.parse_bundled(scripts_text or {})
        stored, from_library = scripts.check_submission(
            definition,
            resolved,
            namespace=namespace,
            bundled=bundled,
            library=self.scripts,
            action_known=action_known(self.runner),
        )
        record = await self.repo.write(
            store.store_submission(
                store.Submission(
                    definition=definition,
                    scripts=stored,
                    library_scripts=from_library,
                    user=user,
                    namespace=namespace,
                    params=resolved,
                    priority=priority,
                    approval=decide_approval(self.approval, namespace, definition),
                    by=by or user,
                )
            )
        )
        scripts.register(self.scripts, stored)
        self._definitions[definition.sha256] = definition
        self.poke(record.id)
        return record

    async def update(
        self,
        rid: str,
        *,
        expanded: Mapping[str, Any],
        sources: Collection[str] = (),
        git: Mapping[str, Any] | None = None,
        scripts_text: Mapping[str, Any] | None = None,
        by: str,
    ) -> RequestRecord:
        """Give standing request ``rid`` a new version of its definition
        (``StandingRequests.update``)."""
        return await self.standing_requests.update(
            rid, expanded=expanded, sources=sources, git=git, scripts_text=scripts_text, by=by
        )

    async def standing_view(self, rid: str) -> JsonObject | None:
        """What consoles show of a standing request (``StandingRequests.view``)."""
        return await self.standing_requests.view(rid)

    async def stale_products(self, rid: str) -> list[JsonValue]:
        """The products of ``rid`` that are no longer current (``stale`` says why)."""
        return list(await self.repo.read(list_products(rid, stale=True)))

    async def warnings_for(self, record: RequestRecord) -> list[str]:
        """Warnings about a request just submitted (it is stored and runs anyway): a
        ``group_by`` field no catalog entry has."""
        definition = self._definitions.get(record.definition)
        if definition is None or not any(s.group_by for s in definition.stages):
            return []
        keys = await self.repo.read(catalog.metadata_keys)
        return standing.unused_group_fields(definition, keys)

    async def act(
        self, rid: str, verb: RequestVerb, *, actor: Actor = Actor.OPERATOR, by: str | None = None
    ) -> Transition:
        """Apply an operator's (or user's) verb. Raises ``RefusedTransition`` naming the
        request's state, ``UnknownRequest``; nothing changes on error."""
        change = await self.repo.write(store.transition(rid, verb, actor, by=by))
        assert change is not None
        self._hold(rid, change.after)  # at once: a dispatch round may come before the step
        self.poke(rid)
        return change

    async def get(self, rid: str) -> RequestRecord:
        """The request as stored; raises ``UnknownRequest``."""
        return await self.repo.read(lambda conn: store.get_request(conn, rid))

    async def wait(
        self, rid: str, states: Collection[RequestState] = TERMINAL_STATES
    ) -> RequestRecord:
        """Return the request once it enters one of ``states`` (committed), or at once if
        it is in one.

        Decided on the state each committed ``request.state`` event entered, not on a
        re-read: a state the request only passed through (``approved`` on its way to
        ``running`` or ``failed``) still answers, with the record as it is now. A request
        that can no longer come to any of ``states`` answers at once if it was in one
        before, else raises ``RequestError`` naming its state: no waiter is kept forever.
        """
        wanted = frozenset(states)
        async with self.repo.subscribe() as events:
            record = await self.get(rid)
            if record.state in wanted:
                return record
            state = record.state
            while _reachable(state) & wanted:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    raise RequestError(f"request {rid}: the engine stopped while waiting") from None
                if isinstance(event, Missed):
                    record = await self.get(rid)
                    if record.state in wanted:
                        return record
                    state = record.state
                elif event.subject == rid and event.kind == "request.state":
                    state = RequestState(event.data["to"])
                    if state in wanted:
                        return await self.get(rid)
            if await self.repo.read(store.states_entered(rid)) & wanted:
                return await self.get(rid)
            record = await self.get(rid)
            why = f" ({record.error})" if record.error else ""
            names = ", ".join(sorted(s.value for s in wanted))
            raise RequestError(f"request {rid}: {state.value}{why}, it will never be {names}")

    # --- one step --------------------------------------------------------------------------

    def remember(self, definition: Definition) -> None:
        """Keep ``definition`` for the requests that will refer to it."""
        self._definitions[definition.sha256] = definition

    def definition_of(self, snap: Snapshot) -> Definition:
        """The definition a request's snapshot refers to (built once per sha256)."""
        return self._definition(snap)

    def _definition(self, snap: Snapshot) -> Definition:
        sha = snap.request.definition
        if sha not in self._definitions:
            self._definitions[sha] = build_definition(snap.expanded)
        return self._definitions[sha]

    async def _step(self, rid: str) -> None:
        snap = await self.repo.read(store.read_snapshot(rid))
        definition = self._definition(snap)
        record = snap.request
        state = record.state
        self._hold(rid, state, ended=not snap.batches)
        for batch in snap.batches:
            if batch.job is not None:
                self._jobs[batch.job] = rid
                self._arm(definition, batch)
        if await self._settle(snap, definition):
            self.poke(rid)
            return
        if state in TERMINAL_STATES or state is _S.ARCHIVED:
            self.standing.forget(rid)
            self._standing.pop(rid, None)
            for batch in snap.batches:
                if batch.stop is None:
                    await self.batches.stop(batch, f"request {state.value}")
            return
        if state is _S.SUBMITTED:
            verb = RequestLifecycle(
                rid, approval_required=record.approval_required, state=state
            ).policy_verb()
            if verb is not None:
                await self.repo.write(
                    store.transition(rid, verb, Actor.ENGINE, expect=_S.SUBMITTED)
                )
                self.poke(rid)
            return
        if state is _S.APPROVED:
            await self._start(rid, definition)
            self.poke(rid)
            return
        if state is _S.CHECKING:
            if rid not in self._checking and self._nursery is not None:
                self._checking.add(rid)
                self._nursery.start_soon(self._check, rid, definition)
            return
        if state is _S.PAUSED:
            for batch in snap.batches:
                if batch.stop is None:
                    await self.batches.stop(batch, "request paused", queued_only=True)
        if definition.standing:
            # Standing: stages stay running, take new inputs, never end; no check.
            if not self.standing.watching(rid):  # after a start: windows still open
                rounds = await self.repo.read(standing_store.last_rounds(rid))
                self.standing.watch(rid, definition.workflow.trigger, rounds)
            self._standing[rid] = definition
            if await self.standing_requests.stages(snap, definition):
                self.poke(rid)
            elif state is _S.RUNNING:
                await self._dispatch(snap, definition)
            return
        if await self._stages(snap, definition):
            self.poke(rid)
            return
        states = {name: s.state for name, s in snap.stages.items()}
        errors = {name: s.error or "" for name, s in snap.stages.items()}
        decision = plan.request_next(definition, states, errors)
        if decision is not None:
            verb, reason = decision
            if verb is RequestVerb.FAIL:
                await self.repo.write(
                    store.transition(rid, verb, Actor.ENGINE, reason=reason, expect=state)
                )
                self.poke(rid)
                return
            if state is _S.RUNNING and not snap.batches:
                await self.repo.write(store.transition(rid, verb, Actor.ENGINE, expect=_S.RUNNING))
                self.poke(rid)
                return
        if state is _S.RUNNING:
            await self._dispatch(snap, definition)

    def _hold(self, rid: str, state: RequestState, *, ended: bool = False) -> None:
        """Have the controller dispatch no job of a paused request, not even one it requeues
        for a retry (a requeue with no delay would otherwise beat the step that cancels it).
        A request that leaves ``paused`` for a final state stays held until its batches are
        all settled (``ended``): its jobs are being stopped, not run."""
        if state is _S.PAUSED:
            self.controller.hold_request(rid)
        elif ended or (state not in TERMINAL_STATES and state is not _S.ARCHIVED):
            self.controller.release_request(rid)

    async def _settle(self, snap: Snapshot, definition: Definition) -> bool:
        """Settle ended batches, cancel jobs no batch names; True if anything changed."""
        changed = False
        for batch in snap.batches:
            if batch.job is None:
                await self.batches.abandon(definition, batch)
                changed = True
            elif batch.job in snap.ended:
                made = await self.batches.settle(
                    snap.request, definition, batch, snap.ended[batch.job]
                )
                self._jobs.pop(batch.job, None)
                self._armed.discard(batch.job)
                changed = True
                if made:
                    # New product files: still under the quota? (Keep what a growing
                    # sub-group of a standing request will run again.)
                    await self.purger.check(
                        {
                            (r, s.name)
                            for r, d in self._standing.items()
                            for s in d.stages
                            if s.group_by
                        }
                    )
        for job_id in snap.unlinked_jobs:
            if job_id in self.controller.jobs:
                log.warning(
                    "request %s: cancelling job %s, which no batch names", snap.request.id, job_id
                )
                await self.controller.cancel(job_id, reason="orphaned by an engine restart")
        return changed

    async def _start(self, rid: str, definition: Definition) -> None:
        found: list[tuple[str, str, dict[str, Any]]] = []
        if definition.query is not None:
            found = await self.repo.read(catalog.find(definition.query))
        if definition.query is not None and not found and not definition.standing:
            reason = "the query matched no catalog entries (see `wfe catalog ls`)"
            await self.repo.write(
                store.transition(
                    rid, RequestVerb.FAIL, Actor.ENGINE, reason=reason, expect=_S.APPROVED
                )
            )
            return
        await self.repo.write(store.start_request(rid, definition, found))

    async def _stages(self, snap: Snapshot, definition: Definition) -> bool:
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
                await self.repo.write(store.set_stage(rid, name, ended[0], error=ended[1] or None))
                return True
        changed = False
        for name, new in plan.stage_changes(definition, states).items():
            if new is StageState.SKIPPED:
                failed = [
                    d for d in definition.stage(name).depends_on if states[d] is not StageState.DONE
                ]
                why = f"upstream stage {failed[0]!r} {states[failed[0]].value}" if failed else ""
                await self.repo.write(store.set_stage(rid, name, new, error=why or None))
                states[name] = new
                changed = True
                continue
            stage = definition.stage(name)
            inputs: list[tuple[str, str, dict[str, Any]]] | None = None
            if stage.consumes is None:
                inputs = [(ONCE, "", {})]
            elif not stage.consumes.from_query:
                inputs = await self.repo.read(
                    upstream_products(rid, stage.consumes.source, stage.consumes.types)
                )
            await self.repo.write(store.set_stage(rid, name, new, inputs=inputs))
            return True
        return changed

    async def _dispatch(self, snap: Snapshot, definition: Definition) -> None:
        started = False
        for name, record in snap.stages.items():
            if record.state is not StageState.RUNNING:
                continue
            stage = definition.stage(name)
            inputs: Sequence[StageInput] = snap.inputs.get(name, ())
            if definition.standing:
                if stage.group_by:  # a sub-group with a job running waits for it
                    inputs = standing.idle(inputs, stage.group_by)
                if not self.standing.may_start(
                    snap.request.id, name, cooldown=stage.cooldown, gap=len(standing.gap(inputs))
                ):
                    continue  # nothing waits, or the stage's cooldown window is still open
                if stage.group_by:  # a sub-group that grew runs again whole
                    again = standing.regroup(inputs, stage.group_by)
                    if again:
                        await self.repo.write(
                            standing_store.rerun_group(
                                snap.request.id, name, again, downstream(definition, name)
                            )
                        )
                        inputs = standing.reopened(inputs, again)
                purged = await self.repo.read(
                    standing_store.purged_inputs(
                        snap.request.id, [i.key for i in standing.gap(inputs)]
                    )
                )
                if purged:  # needed again but purged: its stage makes it again first
                    below = {n: downstream(definition, n) for n in definition.stage_names}
                    if await self.repo.write(
                        standing_store.regenerate(snap.request.id, purged, below)
                    ):
                        started = True  # look again once the new inputs are in
                    continue
            for chunk in plan.batches_to_make(inputs, stage.max_inputs, stage.group_by):
                batch = await self.batches.start(snap.request, definition, stage, chunk)
                started = True
                if batch.job is not None:
                    self._jobs[batch.job] = snap.request.id
                    self._arm(definition, batch)
        if started:
            # A job may have ended before it was in ``_jobs`` (its event then went
            # unheard): one more look settles it.
            self.poke(snap.request.id)

    async def _check(self, rid: str, definition: Definition) -> None:
        try:
            snap = await self.repo.read(store.read_snapshot(rid))
            problems = checking.input_problems(definition, snap.stages, snap.inputs)
            products = await self.repo.read(list_products(rid))
            products = [p for p in products if not p.get("purged_at")]  # purged: no file
            problems += checking.product_problems(products, await checking.rehash(products))
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                await self.repo.write(
                    store.transition(
                        rid,
                        RequestVerb.FAIL,
                        Actor.ENGINE,
                        reason=f"checking failed: {problems[0]}{more}",
                        failures=problems,
                        expect=_S.CHECKING,
                    )
                )
            else:
                states = {name: s.state for name, s in snap.stages.items()}
                errors = {name: s.error or "" for name, s in snap.stages.items()}
                failures = plan.stage_failures(definition, states, errors)
                await self.repo.write(
                    store.transition(
                        rid,
                        RequestVerb.COMPLETE,
                        Actor.ENGINE,
                        failures=failures,
                        expect=_S.CHECKING,
                    )
                )
        except RefusedTransition:
            pass  # cancelled meanwhile
        except Exception as exc:  # a bug must not stop the engine
            log.exception("request %s: checking failed", rid)
            await self._engine_fail(rid, f"engine error while checking: {one_line(exc)}")
        finally:
            self._checking.discard(rid)
            self.poke(rid)

    # --- stage timeouts --------------------------------------------------------------------

    def _arm(self, definition: Definition, batch: Batch) -> None:
        if batch.job is None or batch.job in self._armed:
            return
        self._armed.add(batch.job)
        timeouts = definition.stage(batch.stage).timeouts
        now = trio.current_time()
        for kind, seconds in (("wait_agent", timeouts.wait_agent), ("overall", timeouts.overall)):
            if seconds is not None:
                heapq.heappush(
                    self._timers, (now + seconds, next(self._seq), batch.job, kind, seconds)
                )
                self._wake.set()

    async def _fire_timers(self) -> None:
        now = trio.current_time()
        while self._timers and self._timers[0][0] <= now:
            _, _, job_id, kind, seconds = heapq.heappop(self._timers)
            rid = self._jobs.get(job_id)
            if rid is None:
                continue
            live = self.controller.jobs.get(job_id)
            if kind == "wait_agent":
                if live is None or live.machine is not None:
                    continue  # ended, or an agent has had it
                reason = f"no agent took it within {seconds:g} s (stage timeouts.wait_agent)"
            else:
                reason = f"overall timeout of {seconds:g} s exceeded (stage timeouts.overall)"
            snap = await self.repo.read(store.read_snapshot(rid))
            for batch in snap.batches:
                if batch.job == job_id:
                    # A job between attempts is stopped only once its requeue is committed:
                    # until the stop is done, its requeue event fires this timer again.
                    self._deferred[job_id] = (kind, seconds)
                    stopped = await self.batches.stop(batch, reason)
                    live = self.controller.jobs.get(job_id)
                    between = (
                        live is not None and live.machine is not None and live.machine.terminal
                    )
                    if stopped or not between:
                        self._deferred.pop(job_id, None)


def _reachable(state: RequestState) -> frozenset[RequestState]:
    """The states a request in ``state`` can still come to, ``state`` included."""
    seen = {state}
    todo = [state]
    while todo:
        for after in TRANSITIONS[todo.pop()].values():
            if after not in seen:
                seen.add(after)
                todo.append(after)
    return frozenset(seen)
