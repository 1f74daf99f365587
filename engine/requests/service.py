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

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from wfe.engine.config import (
    ApprovalSection,
    RequestTypesSection,
    SitesSection,
    StorageSection,
)
from wfe.engine.definitions import Definition, build_definition
from wfe.engine.repository import Missed, Subscription
from wfe.engine.repository import requests as store
from wfe.engine.repository import standing as standing_store
from wfe.engine.repository.products import list_products
from wfe.engine.repository.rowtypes import JsonObject, JsonValue
from wfe.engine.requests import catalog, scripts, standing
from wfe.engine.requests.batches import BatchRunner
from wfe.engine.requests.errors import RefusedTransition, RequestError
from wfe.engine.requests.model import (
    RequestRecord,
    Snapshot,
)
from wfe.engine.requests.placement import why_waiting
from wfe.engine.requests.progress import (
    advance_stages,
    check_request,
    end_request,
    open_batches,
    settle_batches,
    start_request,
)
from wfe.engine.requests.purge import Purger
from wfe.engine.requests.stage_timers import StageTimers
from wfe.engine.requests.standing_clock import StandingClock
from wfe.engine.requests.standing_service import StandingRequests, action_known
from wfe.engine.requests.submission import check_submission
from wfe.engine.requests.waiting import wait_for
from wfe.engine.runtime.actions import one_line
from wfe.engine.runtime.jobs import TERMINAL
from wfe.protocols.request import (
    TERMINAL_STATES,
    Actor,
    RequestLifecycle,
    RequestState,
    RequestVerb,
    Transition,
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
        sites: SitesSection | None = None,
        request_types: RequestTypesSection | None = None,
    ) -> None:
        self.repo = repo
        self.approval = ApprovalSection() if approval is None else approval  # [approval]
        self.controller = controller
        self.runner = runner
        self.batches = BatchRunner(
            repo=repo,
            controller=controller,
            runner=runner,
            products_root=products_root,
            sites=(sites or SitesSection()).distances,
        )
        self.request_types = request_types or RequestTypesSection()
        self._definitions: dict[str, Definition] = {}
        self._standing: dict[str, Definition] = {}  # live standing requests' definitions
        self._jobs: dict[str, str] = {}  # job id -> request id, for the jobs of open batches
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self.timers = StageTimers(
            repo=repo,
            controller=controller,
            batches=self.batches,
            jobs=lambda: self._jobs,
            wake=self._wake_up,
        )
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

    def _wake_up(self) -> None:
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
        self.timers.requeued(job_id)

    async def _loop(self) -> None:
        while True:
            with trio.move_on_at(self.timers.next_at()):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.timers.fire()
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
        priority: int | None = None,
        by: str | None = None,
    ) -> RequestRecord:
        """Check and store a request of the expanded definition; return it (submitted).

        ``by`` is who submits (a console token's name), recorded on the submit event; without
        it, the request's ``user``. ``priority`` None: the one ``[request_types]`` of wfe.toml
        gives the definition's ``[workflow] type`` (0 without a type).

        Raises ``DefinitionError`` / ``SubmitError`` with one line before anything is
        stored. The engine approves at once when no person's approval is needed: what
        ``[approval]`` of wfe.toml says for the namespace, else the definition's policy
        (``wfe.engine.requests.approval``).
        """
        submission = check_submission(
            expanded=expanded,
            user=user,
            sources=sources,
            git=git,
            scripts_text=scripts_text,
            params=params,
            namespace=namespace,
            priority=priority,
            by=by,
            approval=self.approval,
            type_priority=self.request_types.priority,
            library=self.scripts,
            action_known=action_known(self.runner),
        )
        record = await self.repo.write(store.store_submission(submission))
        scripts.register(self.scripts, submission.scripts)
        self._definitions[submission.definition.sha256] = submission.definition
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

    def why_waiting(self, rid: str) -> list[str]:
        """Why jobs of ``rid`` wait for an agent, when it is that no agent's site is near
        enough their inputs' replicas (one line each)."""
        jobs = [j for j, owner in self._jobs.items() if owner == rid]
        return why_waiting(self.controller, jobs, self.batches.sites)

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
        return await wait_for(self.repo, rid, states)

    # --- one step --------------------------------------------------------------------------

    def remember(self, definition: Definition) -> None:
        """Keep ``definition`` for the requests that will refer to it."""
        self._definitions[definition.sha256] = definition

    def definition_of(self, snap: Snapshot) -> Definition:
        """The definition a request's snapshot refers to (built once per sha256)."""
        sha = snap.request.definition
        if sha not in self._definitions:
            self._definitions[sha] = build_definition(snap.expanded)
        return self._definitions[sha]

    async def _step(self, rid: str) -> None:
        snap = await self.repo.read(store.read_snapshot(rid))
        definition = self.definition_of(snap)
        record = snap.request
        state = record.state
        self._hold(rid, state, ended=not snap.batches)
        for batch in snap.batches:
            if batch.job is not None:
                self._jobs[batch.job] = rid
                self.timers.arm(definition, batch)
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
            await start_request(self.repo, rid, definition)
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
        if await advance_stages(self.repo, snap, definition):
            self.poke(rid)
            return
        if await end_request(self.repo, snap, definition):
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
        changed, settled, made = await settle_batches(
            self.batches, self.controller, snap, definition
        )
        for job_id in settled:
            self._jobs.pop(job_id, None)
            self.timers.settled(job_id)
        if made:  # new product files: still under the quota? (Keep what a growing
            # sub-group of a standing request will run again.)
            regrouped = {
                (r, s.name) for r, d in self._standing.items() for s in d.stages if s.group_by
            }
            await self.purger.check(regrouped)
        return changed

    async def _dispatch(self, snap: Snapshot, definition: Definition) -> None:
        batches, changed = await open_batches(self.batches, self.standing, snap, definition)
        for batch in batches:
            if batch.job is not None:
                self._jobs[batch.job] = snap.request.id
                self.timers.arm(definition, batch)
        if changed:
            # A job may have ended before it was in ``_jobs`` (its event then went
            # unheard): one more look settles it.
            self.poke(snap.request.id)

    async def _check(self, rid: str, definition: Definition) -> None:
        try:
            await check_request(self.repo, rid, definition)
        except RefusedTransition:
            pass  # cancelled meanwhile
        except Exception as exc:  # a bug must not stop the engine
            log.exception("request %s: checking failed", rid)
            await self._engine_fail(rid, f"engine error while checking: {one_line(exc)}")
        finally:
            self._checking.discard(rid)
            self.poke(rid)
