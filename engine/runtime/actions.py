"""Run actions as trees of tasklets, and record every call as a job.

``ActionRunner.start`` records a job and runs the action's matching tasklets in priority
order, sharing one ``params`` dict, in a task of its own. A tasklet reaches the world only
through its ``Context``: child actions and RScripts it calls become child jobs.

Every call a tasklet makes gets the next ``call_seq`` of its job. After an engine restart
an unfinished root action is run again from the start, and each call finds the job it
made the first time by ``(parent, call_seq)``: finished calls return their recorded result
at once and unfinished ones are waited for, so nothing runs twice. (Tasklets must therefore
make the same calls in the same order when run again; see docs/decisions.md.)

Killing a job cancels its whole tree; the RScripts in it are cancelled on their agents.
Shutting the engine down also cancels the tasks, but records nothing: the jobs stay
unfinished in the repository, to be resumed by the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from wfe.engine.definitions.config import NO_CONFIG, config_of
from wfe.engine.errors import ActionFailed, EngineError, JobCancelled, RScriptFailed, UnknownJob
from wfe.engine.repository.job_log import JobLog
from wfe.engine.repository.jobs import unfinished_root_actions
from wfe.engine.runtime.jobs import (
    TERMINAL,
    Completions,
    JobOutcome,
    JobRow,
    JobState,
    NewJob,
    create_job,
    read_job,
    set_job_state,
)
from wfe.engine.runtime.tasklets import Action, ActionLibrary

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController
    from wfe.engine.repository import Repository
    from wfe.engine.runtime.watchdog import Watchdog
    from wfe.engine.simulate.execution import Execution, SimRun
    from wfe.engine.works.model import Work

log = logging.getLogger("wfe.actions")


def one_line(exc: BaseException) -> str:
    """A one-line description of an error, digging into exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        errors = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        exc = (errors or list(exc.exceptions))[0]
    if isinstance(exc, EngineError | ValueError | LookupError) and str(exc):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


@attrs.define(eq=False)
class Run:
    """A live action job: its cancel scope and how far its tasklets have got."""

    job: JobRow
    parent: Run | None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    killed: bool = False
    next_call: int = 0
    scripts: list[str] = attrs.Factory(list)  # RScript jobs this run started
    # every child job, to forget their outcomes at the end
    children: list[str] = attrs.Factory(list)
    # the request definition's configuration tables (ctx.config); children share the root's
    config: Mapping[str, Any] = NO_CONFIG
    # in a simulated execution (wfe simulate): its clock and this run's task there
    sim: SimRun | None = None
    # a root run's (namespace, [reactors]) for its broadcasts, read at its first publish
    broadcast_scope: tuple[str, Mapping[str, str]] | None = None

    def kill_requested(self) -> bool:
        run: Run | None = self
        while run is not None:
            if run.killed:
                return True
            run = run.parent
        return False


@attrs.frozen(kw_only=True)
class ScriptResult:
    """What a tasklet gets back from ``ctx.rscript``."""

    job_id: str
    state: JobState
    exit_code: int | None
    result: dict[str, Any] | None
    agent: str | None
    error: str | None


class Handle:
    """A child job started without waiting; ``await handle.join()`` for its result."""

    def __init__(self, runner: ActionRunner, job_id: str, kind: str) -> None:
        self.job_id = job_id
        self._runner = runner
        self._kind = kind

    async def join(self) -> Any:
        """Wait for the child and return its result; raise if it did not succeed."""
        from wfe.engine.simulate.clock import current_task

        task, child = current_task(), self._runner._runs.get(self.job_id)
        if task is not None and child is not None and child.sim is not None:
            # a simulation's clock may move on while this task waits for its child
            outcome = await task.clock.wait_on(
                task, child.sim.task, lambda: self._runner.wait(self.job_id)
            )
        else:
            outcome = await self._runner.wait(self.job_id)
        if self._kind == "rscript":
            return await self._runner.script_result(outcome, check=True)
        return _action_result(outcome)


def _action_result(outcome: JobOutcome) -> Any:
    if outcome.state is JobState.SUCCEEDED:
        return outcome.result
    if outcome.state is JobState.CANCELLED:
        raise JobCancelled(f"job {outcome.job_id} was cancelled")
    raise ActionFailed(f"job {outcome.job_id} failed: {outcome.error}")


class Context:
    """All a tasklet may use: child calls, logging, repository reads, sleeping."""

    def __init__(self, runner: ActionRunner, run: Run, children: trio.Nursery) -> None:
        self._runner = runner
        self._run = run
        self._children = children
        self.log = JobLog(log, run.job.id, runner.repo, request=run.job.request_id)  # stored too
        self._began = trio.current_time()

    @property
    def job_id(self) -> str:
        return self._run.job.id

    @property
    def config(self) -> Mapping[str, Any]:
        """The configuration tables of the request's definition (read-only), for actions a
        request's stage started and their children; empty otherwise."""
        return self._run.config

    @property
    def action(self) -> Callable[..., Any]:
        return self.call_action

    @property
    def execution(self) -> Execution | None:
        """The simulated execution this job belongs to (``wfe simulate``), or None."""
        return None if self._run.sim is None else self._run.sim.execution

    @property
    def now(self) -> float:
        """Seconds since the start: of the simulation (its clock, in a simulated
        execution), else of this job (trio's clock)."""
        if self._run.sim is not None:
            return self._run.sim.execution.now()
        return trio.current_time() - self._began

    def start_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` beside the tasklet, in this job (its errors fail the job); in a
        simulation, as a task of its own on the execution's clock."""
        if self._run.sim is None:
            self._children.start_soon(fn, *args)
            return
        from wfe.engine.simulate.clock import current_task
        from wfe.engine.simulate.execution import run_task

        parent = current_task() or self._run.sim.task
        task = self._run.sim.new_task(f"{parent.name}/{getattr(fn, '__name__', 'task')}")
        self._children.start_soon(run_task, task, fn, *args)

    @property
    def repo(self) -> Repository:
        """The repository, for reads (``await ctx.repo.read(fn)``); tasklets never write it."""
        return self._runner.repo

    def _next_call(self) -> int:
        seq = self._run.next_call
        self._run.next_call += 1
        return seq

    async def call_action(self, name: str, /, **params: Any) -> Any:
        """Run the action ``name`` as a child job and return its result.

        Raises ``ActionFailed`` with the child's error if it fails, ``UnknownAction`` if there
        is no such action.
        """
        handle = await self.start_action(name, **params)
        return await handle.join()

    async def start_action(self, name: str, /, **params: Any) -> Handle:
        """Start the action ``name`` as a child job without waiting for it."""
        job_id = await self._runner.start(
            name, params, parent=self._run, call_seq=self._next_call(), nursery=self._children
        )
        self._run.children.append(job_id)
        return Handle(self._runner, job_id, "action")

    async def rscript(
        self, name: str, params: dict[str, Any] | None = None, **options: Any
    ) -> ScriptResult:
        """Run the RScript ``name`` on an agent and return its result.

        Options: ``on`` (agent name), ``priority``, ``requires`` (cpus, memory, tags, site),
        ``retries``, ``timeout`` (per attempt), ``check`` (default true: raise
        ``RScriptFailed`` unless it succeeded), ``simulated`` (seconds: in a simulated
        execution the call takes that much simulated time, docs/simulation.md). Bad
        parameters raise before anything runs.
        """
        check = options.pop("check", True)
        simulated = options.pop("simulated", None)
        began = self.now
        handle = await self.start_rscript(name, params, **options)
        outcome = await self._runner.wait(handle.job_id)
        if simulated is not None and self._run.sim is not None:
            await self._run.sim.sleep_until(began + float(simulated))
        return await self._runner.script_result(outcome, check=check)

    async def start_rscript(
        self, name: str, params: dict[str, Any] | None = None, **options: Any
    ) -> Handle:
        """Queue the RScript ``name`` as a child job without waiting for it."""
        job_id = await self._runner.controller.submit(
            name,
            params or {},
            parent=self._run.job,
            call_seq=self._next_call(),
            **options,
        )
        self._run.scripts.append(job_id)
        self._run.children.append(job_id)
        return Handle(self._runner, job_id, "rscript")

    async def work(
        self, pipeline: str, parameters: dict[str, Any] | None = None, **fields: Any
    ) -> Work:
        """Deposit a work into ``pipeline``'s bucket, for pull workers (``wfe work run``), and
        return it once it has ended (``results``, ``products``, ``plots``).

        ``fields`` are the work's other fields (``priority``, ``timeout``, ``retries``,
        ``tags``, ...) and ``check`` (default true: raise ``WorkFailed`` unless it succeeded).
        Bad fields raise ``WorkError`` before anything is deposited. Replayed after a restart,
        the call finds the work it deposited before.
        """
        from wfe.engine.works.calls import deposit_and_wait

        check = bool(fields.pop("check", True))
        spec = {"pipeline": pipeline, "parameters": parameters or {}, **fields}
        return await deposit_and_wait(
            self.repo, parent=self.job_id, call_seq=self._next_call(), fields=spec, check=check
        )

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        """Broadcast ``message`` (a JSON object of at most 64 KiB) on ``topic`` to this job's
        namespace (its request's, or its simulated execution's): recorded once as the event
        ``broadcast.<topic>`` before this returns, sent to the namespace's agents that react to
        the topic, and given to the definition's ``[reactors]`` for it, each started as a
        child action with the message as its parameters. Raises ``ValueError`` for a bad topic
        or message (``wfe.engine.runtime.broadcasting``)."""
        from wfe.engine.runtime.broadcasting import check, publish

        check(topic, message)  # before the call is numbered: a refused one is no call
        await publish(
            self,
            self._run,
            topic,
            message,
            call_seq=self._next_call(),
            controller=self._runner.controller,
        )

    async def sleep(self, seconds: float) -> None:
        """Sleep without holding the loop (in a simulation: on the execution's clock)."""
        if self._run.sim is not None:
            await self._run.sim.sleep(seconds)
            return
        await trio.sleep(seconds)


class ActionRunner:
    """Starts actions, records their jobs, and kills job trees."""

    def __init__(
        self,
        *,
        repo: Repository,
        library: ActionLibrary,
        controller: AgentController,
        completions: Completions,
        watchdog: Watchdog | None,
        nursery: trio.Nursery,
    ) -> None:
        self.repo = repo
        self.library = library
        self.controller = controller
        self.completions = completions
        self._watchdog = watchdog
        self._nursery = nursery
        self._runs: dict[str, Run] = {}

    def statistics(self) -> dict[str, int]:
        return {"running_actions": len(self._runs)}

    async def start(
        self,
        name: str,
        params: dict[str, Any],
        *,
        parent: Run | None = None,
        call_seq: int | None = None,
        nursery: trio.Nursery | None = None,
        request_id: str | None = None,
        by: str | None = None,
        sim: SimRun | None = None,
    ) -> str:
        """Record a job for the action ``name`` and start running it; return the job id.

        ``by`` names who asked (recorded in the ``job.created`` event); ``sim`` makes the
        root run of a simulated execution (``wfe.engine.simulate``). Raises
        ``UnknownAction`` / ``TaskletError`` before anything is recorded.
        """
        action = self.library.get(name)
        action.check_params(params)
        job = await self.repo.write(
            create_job(
                NewJob(
                    kind="action",
                    name=name,
                    params=params,
                    parent_id=parent.job.id if parent else None,
                    root_id=parent.job.root_id if parent else None,
                    call_seq=call_seq,
                    request_id=request_id,
                    by=by,
                )
            )
        )
        if job.name != name:
            raise EngineError(
                f"job {job.id}: replay diverged: call {call_seq} of {parent.job.id if parent else '-'}"
                f" was {job.name!r}, now {name!r}"
            )
        if job.finished:
            self.completions.resolve(_outcome(job))
        elif job.id not in self._runs:
            self._spawn(action, job, parent, nursery or self._nursery, sim=sim)
        return job.id

    def _spawn(
        self,
        action: Action,
        job: JobRow,
        parent: Run | None,
        nursery: trio.Nursery,
        *,
        sim: SimRun | None = None,
    ) -> None:
        if parent is not None and parent.sim is not None:
            sim = parent.sim.child(f"{parent.sim.task.name}/{action.name}")
        run = Run(job=job, parent=parent, sim=sim)
        if sim is not None and parent is None:
            sim.execution.root = run
        self._runs[job.id] = run
        nursery.start_soon(self._run_action, action, run, name=f"action {action.name} ({job.id})")

    def resume(self, job: JobRow) -> None:
        """Run again a root action job just reset to ``running`` (``wfe.engine.runtime.retry``): its calls
        replay. Raises ``UnknownAction`` when its action is gone; a job running here is left."""
        if job.id not in self._runs:
            self._spawn(self.library.get(job.name), job, None, self._nursery)

    async def resume_unfinished(self) -> int:
        """After a restart: run again every unfinished root action (children replay). Returns
        how many were resumed."""

        from wfe.engine.repository import executions

        jobs = await self.repo.read(unfinished_root_actions)
        # a simulation's clock was in the engine that stopped: it fails, it is not replayed
        simulated = set(await self.repo.write(executions.fail_unfinished(SIMULATION_LOST)))
        for job in jobs:
            if job.id in simulated:
                await self._finish(job, JobState.FAILED, error=SIMULATION_LOST)
                continue
            try:
                action = self.library.get(job.name)
            except EngineError as exc:
                await self._finish(
                    job, JobState.FAILED, error=f"cannot resume after restart: {one_line(exc)}"
                )
                continue
            self._spawn(action, job, None, self._nursery)
        return len(jobs)

    async def wait(self, job_id: str) -> JobOutcome:
        """Wait for a job to end (committed) and return its outcome. Raises ``UnknownJob``."""

        async def lookup() -> JobOutcome | None:
            if job_id in self._runs or job_id in self.controller.jobs:
                return None  # live here: its end will be resolved, no need to read
            job = await self.repo.read(read_job(job_id))
            if job is None:
                raise UnknownJob(f"no job {job_id}")
            return _outcome(job) if job.finished else None

        outcome = await self.completions.wait(job_id, lookup)
        self.completions.forget(job_id)
        return outcome

    async def script_result(self, outcome: JobOutcome, *, check: bool) -> ScriptResult:
        attempt = await self.controller.last_attempt(outcome.job_id)
        result = ScriptResult(
            job_id=outcome.job_id,
            state=outcome.state,
            exit_code=attempt.get("exit_code") if attempt else None,
            result=attempt.get("result") if attempt else None,
            agent=attempt.get("agent") if attempt else None,
            error=outcome.error,
        )
        if check and outcome.state is not JobState.SUCCEEDED:
            if outcome.state is JobState.CANCELLED:
                raise JobCancelled(f"job {outcome.job_id} was cancelled")
            raise RScriptFailed(f"job {outcome.job_id} failed: {outcome.error}")
        return result

    async def kill(self, job_id: str, *, reason: str = "killed by operator") -> str:
        """Cancel a job and its whole tree. Returns the state the job was in."""
        job = await self.repo.read(read_job(job_id))
        if job is None:
            raise UnknownJob(f"no job {job_id}")
        if job.finished:
            return job.state
        if job.kind == "rscript":
            await self.controller.cancel(job_id, reason=reason)
            return job.state
        run = self._runs.get(job_id)
        if run is None:
            await self._finish(job, JobState.CANCELLED, error=reason)
        else:
            run.killed = True
            run.scope.cancel()
        return job.state

    async def _run_action(self, action: Action, run: Run) -> None:
        job = run.job
        if run.sim is not None:
            run.sim.enter()
        try:
            with run.scope:
                if job.state is not JobState.RUNNING:
                    await self.repo.write(set_job_state(job.id, JobState.RUNNING, started=True))
                run.config = await self._config(run)
                result = None
                async with trio.open_nursery() as children:
                    ctx = Context(self, run, children)
                    params = dict(job.params)
                    for tasklet in action.tasklets:
                        if tasklet.match is not None and not tasklet.match(ctx, params):
                            continue
                        if self._watchdog is not None:
                            self._watchdog.label(f"tasklet {tasklet.name} (job {job.id})")
                        value = await tasklet.main(ctx, params)
                        if value is not None:
                            result = value
                    if run.sim is not None:  # the clock moves on while its tasks end
                        run.sim.wait_for_subtasks()
            if run.scope.cancelled_caught:
                if run.kill_requested():
                    await self._killed(run)
                elif run.sim is not None and run.sim.execution.stopped:  # at its --until
                    await self._stopped(run)
                return
        except BaseException as exc:
            if _only_cancelled(exc):  # killed, or the engine is shutting down
                if run.kill_requested():
                    with trio.CancelScope(shield=True):
                        await self._killed(run)
                elif run.sim is not None and run.sim.execution.stopped:
                    with trio.CancelScope(shield=True):
                        await self._stopped(run)
                raise
            if not _has_error(exc):  # KeyboardInterrupt and the like: not ours to handle
                raise
            # a tasklet raised: the job fails, the engine goes on
            log.warning("job %s (%s) failed: %s", job.id, action.name, one_line(exc))
            with trio.CancelScope(shield=True):
                await self._finish(job, JobState.FAILED, error=one_line(exc))
        else:
            await self._finish(job, JobState.SUCCEEDED, result=result)
        finally:
            if run.sim is not None:
                run.sim.task.done()
            self._runs.pop(job.id, None)
            for child in run.children:  # outcomes nobody joined would otherwise stay forever
                self.completions.forget(child)

    async def _config(self, run: Run) -> Mapping[str, Any]:
        """``ctx.config`` of ``run``: its parent's, or its request definition's tables."""
        if run.parent is not None:
            return run.parent.config
        if run.sim is not None:
            return run.sim.execution.config
        rid = run.job.request_id
        if rid is None:
            return NO_CONFIG
        from wfe.engine.repository.requests import get_request, stored_definition

        def read(db: Any) -> Mapping[str, Any]:
            return config_of(stored_definition(db, get_request(db, rid).definition).expanded)

        config: Mapping[str, Any] = await self.repo.read(read)
        return config

    async def _killed(self, run: Run) -> None:
        """Record a killed run, and cancel the RScripts it started on their agents."""
        for job_id in run.scripts:
            if job_id in self.controller.jobs:
                await self.controller.cancel(job_id, reason="killed with its parent")
        await self._finish(run.job, JobState.CANCELLED, error="killed")

    async def _stopped(self, run: Run) -> None:
        """Record a run of a simulation stopped at its ``until``: the root succeeded (the
        simulation ran as long as asked), the others were cancelled; RScripts it started
        are cancelled on their agents."""
        for job_id in run.scripts:
            if job_id in self.controller.jobs:
                await self.controller.cancel(job_id, reason="the simulation stopped")
        assert run.sim is not None
        until = run.sim.execution.clock.until
        if run.parent is None:
            await self._finish(run.job, JobState.SUCCEEDED, result={"stopped_at": until})
        else:
            await self._finish(
                run.job, JobState.CANCELLED, error=f"the simulation stopped at {until:g} s"
            )

    async def _finish(
        self, job: JobRow, state: JobState, *, result: Any = None, error: str | None = None
    ) -> None:
        try:
            await self.repo.write(set_job_state(job.id, state, result=result, error=error))
        except TypeError as exc:  # a result that is not JSON
            state, error, result = JobState.FAILED, f"result is not JSON: {exc}", None
            await self.repo.write(set_job_state(job.id, state, error=error))
        run = self._runs.get(job.id)
        if run is not None and run.sim is not None and run.parent is None:
            await run.sim.ended(state.value, result, error)  # the execution ends with it
        self.completions.resolve(
            JobOutcome(job_id=job.id, state=state, result=result, error=error),
            keep=job.parent_id is not None,
        )


#: Why a simulated execution found unfinished at start fails.
SIMULATION_LOST = "the engine stopped during the simulation; run it again"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _only_cancelled(exc: BaseException) -> bool:
    return all(isinstance(leaf, trio.Cancelled) for leaf in _leaves(exc))


def _has_error(exc: BaseException) -> bool:
    return any(isinstance(leaf, Exception) for leaf in _leaves(exc))


def _outcome(job: JobRow) -> JobOutcome:
    assert job.state in TERMINAL
    return JobOutcome(job_id=job.id, state=job.state, result=job.result, error=job.error)
