"""Pure decisions about a running request: which stages start, end or are skipped, how
inputs are batched and settled, and what the request does next.

Nothing here awaits or touches the repository; the service (``wfe.engine.requests.service``)
reads a ``Snapshot``, asks these functions, and writes what they decide. The rules:

* A stage starts when every stage it depends on (``after`` and ``consumes``) is DONE; it is
  SKIPPED when one of them FAILED or was SKIPPED.
* A stage is DONE when every input is processed and no batch is open. An input that fails
  fails the stage: at once under ``on_stage_failure = "fail"`` (the request fails too), or
  once the stage has nothing left to do under ``"complete"``.
* A job that ends badly releases its inputs (``InputAllocation.release``: an input handed
  out ``max_allocations`` times is failed instead). A job the engine itself stopped (pause,
  request cancelled or failed) *withdraws* its inputs: back to the pool without counting
  the allocation, since the input was never tried.
* When every stage is terminal the request is checked; under the ``"fail"`` policy a failed
  stage fails the request first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from wfe.engine.definitions import Definition, OnStageFailure, topological_order
from wfe.engine.requests.model import STAGE_TERMINAL, BatchOutcome, StageInput, StageState
from wfe.engine.requests.standing import sub_groups
from wfe.protocols.request import InputAllocation, InputState, RequestVerb, take_inputs

_OPEN_INPUT = frozenset({InputState.UNALLOCATED, InputState.ALLOCATED})


def stage_changes(
    definition: Definition, states: Mapping[str, StageState]
) -> dict[str, StageState]:
    """The WAITING stages to start (RUNNING) or skip (SKIPPED) now, in run order."""
    current = dict(states)
    changes: dict[str, StageState] = {}
    for name in topological_order(definition):
        if current.get(name) is not StageState.WAITING:
            continue
        upstream = [current[d] for d in definition.stage(name).depends_on]
        if any(s in (StageState.FAILED, StageState.SKIPPED) for s in upstream):
            current[name] = changes[name] = StageState.SKIPPED
        elif all(s is StageState.DONE for s in upstream):
            changes[name] = StageState.RUNNING
    return changes


def stage_end(
    inputs: Sequence[StageInput], open_batches: int, *, fail_fast: bool
) -> tuple[StageState, str] | None:
    """The terminal state a RUNNING stage reaches now, with the reason for FAILED; or None."""
    failed = [i for i in inputs if i.allocation.state is InputState.FAILED]
    reason = _failed_inputs(failed)
    if failed and fail_fast:
        return StageState.FAILED, reason
    if open_batches or any(i.allocation.state in _OPEN_INPUT for i in inputs):
        return None
    if failed:
        return StageState.FAILED, reason
    return StageState.DONE, ""


def _failed_inputs(failed: Sequence[StageInput]) -> str:
    if not failed:
        return ""
    first = failed[0]
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return f"input {first.key} failed: {first.allocation.reason}{more}"


def batches_to_make(
    inputs: Iterable[StageInput], max_inputs: int | None, group_by: Sequence[str] = ()
) -> list[list[StageInput]]:
    """The batches to make from a stage's unallocated inputs, in input order: each takes at
    most ``max_inputs`` (all of them when None), or with ``group_by`` one sub-group (the
    inputs with the same values of those metadata fields)."""
    pool = sorted((i for i in inputs if i.allocation.state is InputState.UNALLOCATED), key=_seq)
    if group_by:
        return sub_groups(pool, group_by)
    by_id = {i.key: i for i in pool}
    allocations = [i.allocation for i in pool]
    batches: list[list[StageInput]] = []
    while True:
        taken = take_inputs(allocations, max_inputs)
        if not taken:
            return batches
        batches.append([by_id[a.input_id] for a in taken])
        chosen = {a.input_id for a in taken}
        allocations = [a for a in allocations if a.input_id not in chosen]


def _seq(item: StageInput) -> int:
    return item.seq


def withdraw(allocation: InputAllocation, holder: str) -> InputAllocation:
    """Back to the pool without counting the allocation: the holder never tried it.

    Raises ``IllegalTransition`` like ``release`` when ``holder`` does not hold it.
    """
    released = allocation.release(holder, max_allocations=allocation.allocations + 1)
    return attrs.evolve(released, allocations=allocation.allocations - 1)


def settle(
    allocations: Iterable[InputAllocation],
    holder: str,
    outcome: BatchOutcome,
    *,
    max_allocations: int,
    reason: str = "",
) -> list[InputAllocation]:
    """The inputs of a batch after its job ended with ``outcome``.

    Inputs the batch no longer holds (already settled) are returned unchanged, so settling
    twice changes nothing. A released input that runs out of allocations is failed, its
    reason naming the last job's error.
    """
    result = []
    for a in allocations:
        if a.state is not InputState.ALLOCATED or a.job_id != holder:
            result.append(a)
        elif outcome is BatchOutcome.PROCESSED:
            result.append(a.process(holder))
        elif outcome is BatchOutcome.WITHDRAWN:
            result.append(withdraw(a, holder))
        else:
            after = a.release(holder, max_allocations=max_allocations)
            if after.state is InputState.FAILED and reason:
                after = attrs.evolve(after, reason=f"{after.reason}; last: {reason}")
            result.append(after)
    return result


def request_next(
    definition: Definition, states: Mapping[str, StageState], errors: Mapping[str, str]
) -> tuple[RequestVerb, str] | None:
    """What a running request does next: ``FAIL`` (with the reason) when a stage failed
    under the "fail" policy, ``CHECK`` when every stage is terminal, else None."""
    if definition.policy.on_stage_failure is OnStageFailure.FAIL:
        for name in topological_order(definition):
            if states[name] is StageState.FAILED:
                return RequestVerb.FAIL, f"stage {name!r} failed: {errors.get(name) or 'no reason'}"
    if all(s in STAGE_TERMINAL for s in states.values()):
        return RequestVerb.CHECK, ""
    return None


def stage_failures(
    definition: Definition, states: Mapping[str, StageState], errors: Mapping[str, str]
) -> list[str]:
    """One line per failed or skipped stage, in run order (what a completed request lists)."""
    lines = []
    for name in topological_order(definition):
        if states[name] is StageState.FAILED:
            lines.append(f"stage {name!r} failed: {errors.get(name) or 'no reason'}")
        elif states[name] is StageState.SKIPPED:
            lines.append(
                f"stage {name!r} skipped: {errors.get(name) or 'an upstream stage failed'}"
            )
    return lines
