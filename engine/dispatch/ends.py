"""The ends of attempts: from an attempt's final event to the agent's ``Ack``.

Order of things, always: feed the event to the attempt's machine, decide what follows
(``policy.decide_end``: the job's end, or its next attempt), make the attempt's output whole
(``OutputFill``) when the agent reported one, commit the end together with what follows it
(one transaction), and only then act: resolve the job's waiters or queue it again, and
acknowledge the agent's report. The commit callback applies what was decided; it decides
nothing. A result the agent resends while its end is being committed gets no ``Ack`` (the
one after the commit answers it), or the agent would drop a result not yet safe.

A report for an attempt that is no longer current (a duplicate, or an attempt given up on
as lost whose agent was cut off past its lease) is never thrown away: ``policy.judge_late``
says whether it is only acknowledged, recorded on the attempt, or the job's outcome.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import outcome
import trio

from wfe.engine.config import AgentsSection
from wfe.engine.definitions.on_retry import SPLIT
from wfe.engine.dispatch import policy
from wfe.engine.dispatch.live import AgentLink, LiveJob
from wfe.engine.dispatch.output_fill import OutputFill
from wfe.engine.dispatch.queue import JobQueue
from wfe.engine.dispatch.registry import AgentRegistry
from wfe.engine.dispatch.timers import ReadyAgain, Timers
from wfe.engine.repository import attempts as rows
from wfe.engine.repository.rowtypes import JsonObject
from wfe.engine.requests.split import inputs_of, kept_locality, kept_params
from wfe.engine.runtime import metrics
from wfe.engine.runtime.jobs import Completions, JobOutcome, JobState
from wfe.protocols import attempt as am
from wfe.protocols.messages import Ack, JobFinished

if TYPE_CHECKING:
    from wfe.engine.repository import Repository

log = logging.getLogger("wfe.controller")


@attrs.frozen(kw_only=True)
class AttemptOver:
    """An attempt's end as decided, on its way to the repository."""

    job: LiveJob
    machine: am.AttemptMachine
    finished: JobFinished | None  # the agent's report, when it made one
    outcome: policy.Outcome
    then: rows.JobEnded | rows.JobRequeued  # what is committed with it
    ran_with: dict[str, Any] | None = None  # what the attempt ran with, when on_retry may change it


class AttemptEnds:
    """Decides, records and acts on the ends of attempts (``over``) and late reports."""

    def __init__(
        self,
        *,
        repo: Repository,
        queue: JobQueue,
        registry: AgentRegistry,
        timers: Timers,
        completions: Completions,
        settings: AgentsSection,
        spawn: Callable[..., None],
        wake: Callable[[], None],
        owner: object,
    ) -> None:
        self._repo = repo
        self._queue = queue
        self._timers = timers
        self._completions = completions
        self._settings = settings
        self._registry = registry
        self._link = registry.link  # an agent's current link, if it has one
        self._spawn = spawn  # start a task in the controller's nursery
        self._wake = wake  # a slot is free: a dispatch round may have work
        self._owner = owner  # whose /metrics figures these are
        self.output_fill = OutputFill(repo)  # makes output whole before a result is committed
        # (job, attempt) whose result arrived and whose end is not committed yet
        self._unacked: set[tuple[str, int]] = set()

    def over(self, job: LiveJob, event: am.Event, finished: JobFinished | None) -> None:
        """Feed the final event of ``job``'s attempt (``finished``: the agent's report, if
        that is the event), decide what follows, and write it. An attempt being cancelled
        that must wait for its agent's confirmation is left to wait."""
        machine = job.machine
        assert machine is not None
        if machine.handle(event) is am.AttemptState.CANCELLING:
            return
        self._registry.release(machine, trio.current_time())
        self._wake()
        decided = policy.decide_end(
            policy.AttemptEnd(
                attempt=machine.attempt,
                state=machine.state,
                failures=job.failures,
                lost=job.lost,
                max_attempts=job.max_attempts,
                max_redispatch=self._settings.max_redispatch,
                backoff=job.backoff,
                timeout=job.timeout,
                exit_code=machine.exit_code,
                signal=machine.signal,
                detail=machine.detail,
                fail_reason=job.fail_reason,
                requirements=job.requirements,
                on_retry=job.on_retry,
                inputs=inputs_of(job.params),
                now=trio.current_time(),
            )
        )
        ran_with = _ran_with(job) if job.on_retry else None
        then: rows.JobEnded | rows.JobRequeued
        match decided:
            case policy.RetryAt(failures=failures, delay=delay, requirements=changed, inputs=kept):
                job.failures = failures
                new: dict[str, Any] = {}
                if changed is not None:
                    new = {k: v for k, v in changed.items() if job.requirements.get(k) != v}
                    job.requirements = dict(changed)
                if changed is not None or kept is not None:
                    log.info("%s: %s", job.job_id, decided.reason)
                # The job's params keep the first ``kept`` inputs once the split is
                # committed (``_committed``): its batch may not be one that can split.
                then = rows.JobRequeued(delay=delay, changed=new, keep=kept, why=decided.reason)
            case policy.Redispatch(lost=lost):
                job.lost = lost
                then = rows.JobRequeued(delay=0.0)
            case policy.Succeeded():
                then = rows.JobEnded(state=JobState.SUCCEEDED)
            case policy.Cancelled(reason=reason):
                then = rows.JobEnded(state=JobState.CANCELLED, error=reason)
            case policy.Failed(reason=reason):
                then = rows.JobEnded(state=JobState.FAILED, error=reason)
        if isinstance(then, rows.JobEnded):
            # No longer live from this moment, so a cancel that arrives while the end is
            # being written cannot turn it into "cancelled" or resolve it twice; and a call
            # replayed meanwhile must not take it on again.
            self._queue.begin_end(job)
        end = AttemptOver(
            job=job,
            machine=machine,
            finished=finished,
            outcome=decided,
            then=then,
            ran_with=ran_with,
        )
        if finished is not None:
            self._unacked.add((job.job_id, machine.attempt))
        if finished is not None and finished.chunks:
            self._spawn(self._settle, end)  # its output may have holes to fill first
        else:
            self.output_fill.forget(job.job_id, machine.attempt)
            self._write(end)

    async def _settle(self, end: AttemptOver) -> None:
        """Wait until the output is whole (or given up on), then write the end."""
        assert end.finished is not None
        await self.output_fill.complete(end.finished, lambda: self._link(end.machine.agent))
        self._write(end)

    def _write(self, end: AttemptOver) -> None:
        metrics.attempt_ended(self._owner, end.machine)  # /metrics: dispatch→result latency
        op = rows.attempt_ended(end.machine, end.finished, end.then, end.ran_with)
        self._repo.write_nowait(op, then=functools.partial(self._committed, end))

    def _committed(self, end: AttemptOver, written: outcome.Outcome[JsonObject | None]) -> None:
        """Act on a committed end: resolve the job or queue it again, then ``Ack``."""
        job, machine, then = end.job, end.machine, end.then
        self._unacked.discard((job.job_id, machine.attempt))
        if isinstance(then, rows.JobEnded):
            self._queue.end_committed(job.job_id)
        if isinstance(written, outcome.Error):
            self._fail(written.error)
            return
        split = written.unwrap()
        if split is not None and isinstance(split["kept"], list):  # what the retry runs
            keep = len(split["kept"])
            job.params = kept_params(job.params, keep)
            if "locality" in job.requirements:
                job.requirements["locality"] = kept_locality(job.requirements["locality"], keep)
        if isinstance(then, rows.JobEnded):
            result = end.finished.result if end.finished else None
            self._completions.resolve(
                JobOutcome(job_id=job.job_id, state=then.state, result=result, error=then.error),
                keep=job.parent_id is not None,
            )
        elif self._queue.jobs.get(job.job_id) is job:  # else cancelled since: that is written
            at = end.outcome.at if isinstance(end.outcome, policy.RetryAt) else -1.0
            if at > trio.current_time():
                self._timers.schedule(at, ReadyAgain(job.job_id, machine.attempt))
            else:
                self._queue.enqueue(job)
        link = self._link(machine.agent) if end.finished is not None else None
        if link is not None:
            link.send_nowait(Ack(job_id=job.job_id, attempt=machine.attempt))

    def _fail(self, error: BaseException) -> None:
        """Stop the controller with ``error`` (a write it depends on failed), as an awaited
        write raising in one of its tasks would."""
        try:
            self._spawn(_reraise, error)
        except RuntimeError:  # the controller has stopped already
            log.error("controller stopped; a write failed after it: %s", error)

    # --- reports for attempts no longer current ---------------------------------------------

    def stale(self, agent: str, message: JobFinished, relink: AgentLink | None) -> None:
        """A report for an attempt that is not current on ``agent``."""
        key = (message.job_id, message.attempt)
        if key in self._unacked:
            # Resent while its end is being written (or its output filled): no Ack yet, or the
            # agent would drop a result that is not committed. Ask again for missing output.
            self.output_fill.relink(*key, relink)
            return
        self._unacked.add(key)
        self._spawn(self._late, agent, message)

    async def _late(self, agent: str, message: JobFinished) -> None:
        """Record a report for an attempt no longer current, then acknowledge it."""
        key = (message.job_id, message.attempt)
        try:
            recorded = await self._repo.read(rows.attempt_state(*key))
            reported = am.finished_state(
                am.Finished(
                    reason=message.reason,
                    at=trio.current_time(),
                    exit_code=message.exit_code,
                    signal=message.signal,
                )
            )
            job = self._queue.jobs.get(message.job_id)
            waiting = job is not None and self._queue.waiting(job)
            verdict = policy.judge_late(recorded=recorded, reported=reported, job_waiting=waiting)
            if not isinstance(verdict, policy.RecordLate):
                log.info("duplicate result for %s#%d from %s acknowledged", *key, agent)
                return
            adopt = job if verdict.outcome else None
            if adopt is not None:
                self._queue.begin_end(adopt)
            if message.chunks:
                await self.output_fill.complete(message, lambda: self._link(agent))
            told = " (the job's outcome)" if adopt else " (recorded on the attempt)"
            log.warning("late result for %s#%d from %s: %s%s", *key, agent, reported.value, told)
            end = JobState.SUCCEEDED if adopt else None
            await self._repo.write(rows.late_result(message, verdict.state, job_state=end))
            if adopt is not None:
                self._queue.end_committed(adopt.job_id)
                self._completions.resolve(
                    JobOutcome(
                        job_id=adopt.job_id, state=JobState.SUCCEEDED, result=message.result
                    ),
                    keep=adopt.parent_id is not None,
                )
        finally:
            self._unacked.discard(key)
            self._queue.late_read(key)
            link = self._link(agent)
            if link is not None:
                link.send_nowait(Ack(job_id=message.job_id, attempt=message.attempt))


def _ran_with(job: LiveJob) -> dict[str, Any]:
    """What of its requirements an attempt of ``job`` ran with that ``on_retry`` may change,
    and the number of its inputs when a rule may split them."""
    ran = {k: job.requirements[k] for k in job.on_retry if k in job.requirements}
    if SPLIT in job.on_retry:
        ran["inputs"] = inputs_of(job.params)
    return ran


async def _reraise(error: BaseException) -> None:
    raise error
