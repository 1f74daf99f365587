"""Running a stage's batches as jobs: submit, stop, and settle them.

``BatchRunner`` is the service's hands: it opens a batch (allocating its inputs), starts
its job (an RScript through the controller, or an action through the action runner) and
records which job it is; it stops jobs (pause, request over, stage timeouts) noting why;
and when a job has ended it settles the batch: products from a valid result and inputs
processed, or inputs released (counted against ``max_allocations``) or withdrawn.

Order of things, always: commit the batch and its allocation, then submit the job, then
commit the link. A crash between the last two leaves a job no batch names; the service
cancels such jobs when it finds them, and settles a batch without a job as withdrawn.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from wfe.engine.definitions import INPUTS_PARAM, Definition, Lifetime, Stage, stage_params
from wfe.engine.dispatch import locality
from wfe.engine.errors import UnknownJob
from wfe.engine.repository import request_batches
from wfe.engine.repository import requests as store
from wfe.engine.requests.model import Batch, BatchOutcome, JobEnd, RequestRecord, StageInput
from wfe.engine.requests.placement import place_inputs
from wfe.engine.requests.products import from_inputs, from_result
from wfe.engine.requests.scripts import OUTPUT_DIR_PARAM
from wfe.engine.requests.standing import version_of
from wfe.engine.runtime.actions import one_line
from wfe.engine.runtime.jobs import TERMINAL, JobState
from wfe.protocols.attempt import AttemptState
from wfe.rscripts.errors import RScriptError

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController
    from wfe.engine.repository import Repository
    from wfe.engine.runtime.actions import ActionRunner

log = logging.getLogger("wfe.requests")

#: Stop reasons that return a batch's inputs without counting the allocation: the engine
#: stopped the job for reasons of its own, not because the inputs were tried and failed.
WITHDRAW_PREFIX = "request "

_FINAL = frozenset({AttemptState.SUCCEEDED, AttemptState.CANCELLED})


def requirements(stage: Stage) -> dict[str, Any]:
    """A stage's ``requires`` in the form ``controller.submit`` takes."""
    req = stage.requires
    given: dict[str, Any] = {
        "cpus": req.cpus,
        "memory": req.memory,
        "tags": list(req.tags),
        "site": req.site,
        "on_retry": dict(stage.on_retry),  # travels with the job (dispatch/jobspec.py)
    }
    return {k: v for k, v in given.items() if v not in (None, [], {})}


def outcome_of(batch: Batch, end: JobEnd) -> tuple[BatchOutcome, str]:
    """What a job's end means for its batch's inputs, and why. Pure."""
    if end.state is JobState.SUCCEEDED:
        return BatchOutcome.PROCESSED, ""
    if batch.stop is not None:
        if batch.stop.startswith(WITHDRAW_PREFIX):
            return BatchOutcome.WITHDRAWN, batch.stop
        return BatchOutcome.RELEASED, f"job {end.job_id} stopped: {batch.stop}"
    return BatchOutcome.RELEASED, f"job {end.job_id} {end.state}: {end.error or 'no detail'}"


class BatchRunner:
    """Opens, starts, stops and settles the batches of requests' stages."""

    def __init__(
        self,
        *,
        repo: Repository,
        controller: AgentController,
        runner: ActionRunner | None,
        products_root: Path | None,
        sites: locality.Sites | None = None,
    ) -> None:
        self.repo = repo
        self.controller = controller
        self.runner = runner
        self.products_root = products_root
        self.sites = {} if sites is None else sites  # [sites] distances of wfe.toml

    async def start(
        self,
        record: RequestRecord,
        definition: Definition,
        stage: Stage,
        inputs: list[StageInput],
    ) -> Batch:
        """Open a batch of ``inputs`` and start its job; returns the batch (linked, or
        settled as released when the job could not be started)."""
        root = None if self.products_root is None else str(self.products_root)
        batch = await self.repo.write(
            request_batches.open_batch(record.id, stage.name, [i.key for i in inputs], root)
        )
        try:
            job_id = await self._submit(record, definition, stage, inputs, batch)
        except (RScriptError, LookupError, ValueError, TypeError, OSError) as exc:
            reason = f"cannot start a job: {one_line(exc)}"
            log.warning("request %s stage %s: %s", record.id, stage.name, reason)
            await self.repo.write(
                request_batches.settle_batch(
                    batch,
                    BatchOutcome.RELEASED,
                    max_allocations=definition.policy.max_allocations,
                    reason=reason,
                )
            )
            return batch
        await self.repo.write(request_batches.link_batch(batch, job_id))
        return Batch(
            id=batch.id,
            request=batch.request,
            stage=batch.stage,
            job=job_id,
            inputs=batch.inputs,
            output_dir=batch.output_dir,
            open=True,
        )

    async def _submit(
        self,
        record: RequestRecord,
        definition: Definition,
        stage: Stage,
        inputs: list[StageInput],
        batch: Batch,
    ) -> str:
        params = stage_params(definition, stage.name, record.params)
        if stage.consumes is not None:
            params[INPUTS_PARAM] = [i.as_param() for i in inputs]
        priority = record.priority + stage.priority
        if stage.action is not None:
            assert self.runner is not None, "actions need the action runner"
            return await self.runner.start(stage.action, params, request_id=record.id)
        assert stage.rscript is not None
        key = record.script_key(stage.rscript)
        header = self.controller.scripts.get(key).header
        if header.param(OUTPUT_DIR_PARAM) is not None and OUTPUT_DIR_PARAM not in params:
            if batch.output_dir is not None:
                params[OUTPUT_DIR_PARAM] = batch.output_dir
                await trio.to_thread.run_sync(
                    lambda: os.makedirs(batch.output_dir or "", exist_ok=True)
                )
        requires = requirements(stage)
        if stage.consumes is not None:  # inputs with replicas: which each site would read
            paths = [i.path for i in inputs]
            placed = await place_inputs(self.repo, paths, self.sites, stage.max_distance)
            if placed is not None:
                requires["locality"] = placed
        return await self.controller.submit(
            key,
            params,
            priority=priority,
            requires=requires,
            retries=stage.retries,
            timeout=stage.timeouts.attempt,
            request_id=record.id,
        )

    async def stop(self, batch: Batch, reason: str, *, queued_only: bool = False) -> bool:
        """Stop ``batch``'s job, noting ``reason``; with ``queued_only``, only if no agent
        has it now (pause): queued, or waiting to be retried. Returns whether a stop was
        requested; False for a job whose last attempt has ended but whose requeue is not
        committed yet (call again after its ``job.state`` "queued" event)."""
        job_id = batch.job
        if job_id is None:
            return False
        live = self.controller.jobs.get(job_id)
        if live is not None:
            machine = live.machine
            if machine is not None and machine.state in _FINAL:
                return False  # its end is being recorded
            if machine is not None and not machine.terminal:
                if queued_only:
                    return False  # with an agent now: a pause lets it finish
            elif machine is not None:
                # Between attempts: its last attempt failed and it waits to be retried. It
                # is as good as queued once the controller has committed the requeue;
                # before that, a cancel would race the controller's own writes (the
                # requeue event pokes the request again, so the stop is only put off).
                if not await self.repo.read(store.requeued_after(job_id, machine.attempt)):
                    return False
                if self.controller.jobs.get(job_id) is not live or live.machine is not machine:
                    return False  # dispatched again (or ended) while we read
            # No checkpoint between the look and the cancel: the job can't be dispatched
            # in between, so "not with an agent" still holds when the cancel lands.
            await self.controller.cancel(job_id, reason=reason)
        elif queued_only or self.runner is None:
            return False
        else:  # an action (or a job already ended, which kill leaves alone)
            try:
                if await self.runner.kill(job_id, reason=reason) in TERMINAL:
                    return False
            except UnknownJob:
                return False
        await self.repo.write(request_batches.stop_batch(batch, reason))
        return True

    async def settle(
        self, record: RequestRecord, definition: Definition, batch: Batch, end: JobEnd
    ) -> list[str]:
        """Settle ``batch`` now that its job has ended; returns the new product ids."""
        outcome, reason = outcome_of(batch, end)
        products = []
        sources: list[list[str]] = []
        if outcome is BatchOutcome.PROCESSED:
            stage = definition.stage(batch.stage)
            script = stage.action or record.script_key(stage.rscript or "")
            try:
                result = end.result
                if end.kind == "action" and not (isinstance(result, dict) and "products" in result):
                    result = None
                products = from_result(result, script=script, output_dir=batch.output_dir)
                if any(p.from_inputs for p in products) and batch.inputs:
                    paths = await self.repo.read(
                        request_batches.input_paths(batch.request, batch.stage, batch.inputs)
                    )
                    sources = [from_inputs(p, paths, end.job_id) for p in products]
            except RScriptError as exc:
                outcome, reason = BatchOutcome.RELEASED, f"job {end.job_id}: bad result: {exc}"
                products, sources = [], []
        return await self.repo.write(
            request_batches.settle_batch(
                batch,
                outcome,
                max_allocations=definition.policy.max_allocations,
                reason=reason,
                products=products,
                definition=record.definition,
                version=version_of(record, definition, batch.stage),
                product_inputs=sources,
                intermediate=definition.stage(batch.stage).lifetime is Lifetime.INTERMEDIATE,
            )
        )

    async def abandon(self, definition: Definition, batch: Batch) -> None:
        """Settle a batch whose job was never recorded (a crash in between): withdrawn."""
        await self.repo.write(
            request_batches.settle_batch(
                batch,
                BatchOutcome.WITHDRAWN,
                max_allocations=definition.policy.max_allocations,
                reason="its job was never started",
            )
        )
