"""Pure decisions for standing requests: the gap, cooldown rounds, sub-groups, versions.

A standing request (trigger continuous or cron) never checks and completes: its stages
stay running and take new inputs as they come. What runs, and when, is decided here as
functions of state and time, so that tests need no engine:

* **The gap** of a stage is its inputs that no job of the stage's current version has
  processed: in the repository's terms its *unallocated* inputs (new catalog entries, new
  upstream products, and inputs reset because the stage's version changed).
* **Cooldown rounds.** A stage with a gap starts a round (its batches for the whole gap)
  at once if it never ran or its last round started at least ``cooldown`` seconds ago;
  otherwise it waits until then, and the round takes everything that arrived meanwhile.
* **Sub-groups.** With ``group_by``, one batch per distinct combination of the metadata
  fields; a sub-group that gains inputs is run again whole (``regroup``).
* **Versions.** A stage's version is a hash of its RScript's content and its resolved
  parameters (``stage_version``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from wfe.engine.definitions import Definition, stage_params
from wfe.engine.requests.model import RequestRecord, StageInput
from wfe.protocols.request import InputState


@attrs.frozen(kw_only=True)
class Round:
    """What a stage does now: ``start`` a round, or wait until ``wake_at`` (or nothing)."""

    start: bool
    wake_at: float | None = None


def next_round(*, gap: int, last_round: float | None, cooldown: float, now: float) -> Round:
    """Whether a standing stage with ``gap`` inputs waiting starts a round at ``now``.

    ``last_round`` is when its previous round started (None: never). At most one round
    starts per ``cooldown`` window; a stage with nothing to do does not wait for anything.
    """
    if gap <= 0:
        return Round(start=False)
    if last_round is None or now >= last_round + cooldown:
        return Round(start=True)
    return Round(start=False, wake_at=last_round + cooldown)


def gap(inputs: Iterable[StageInput]) -> list[StageInput]:
    """The inputs of a stage that wait for a job of its current version, in input order."""
    return sorted(
        (i for i in inputs if i.allocation.state is InputState.UNALLOCATED), key=lambda i: i.seq
    )


def new_matches(
    present: Iterable[str], found: Sequence[tuple[str, str, Mapping[str, Any]]]
) -> list[tuple[str, str, Mapping[str, Any]]]:
    """The finder's matches (``(key, path, metadata)``) a stage does not have yet, in order."""
    known = set(present)
    return [m for m in found if m[0] not in known]


def group_key(metadata: Mapping[str, Any], fields: Sequence[str]) -> tuple[str, ...]:
    """The sub-group of an input: its values of ``fields`` (JSON text; missing is null)."""
    return tuple(json.dumps(metadata.get(f), sort_keys=True) for f in fields)


def sub_groups(inputs: Iterable[StageInput], fields: Sequence[str]) -> list[list[StageInput]]:
    """``inputs`` split by the values of ``fields``: one list per sub-group, each in input
    order, the sub-groups in the order of their first input."""
    groups: dict[tuple[str, ...], list[StageInput]] = {}
    for item in sorted(inputs, key=lambda i: i.seq):
        groups.setdefault(group_key(item.metadata, fields), []).append(item)
    return list(groups.values())


def busy(inputs: Iterable[StageInput], fields: Sequence[str]) -> set[tuple[str, ...]]:
    """The sub-groups a job holds inputs of now: they wait for it before running again."""
    return {
        group_key(i.metadata, fields) for i in inputs if i.allocation.state is InputState.ALLOCATED
    }


def idle(inputs: Sequence[StageInput], fields: Sequence[str]) -> list[StageInput]:
    """``inputs`` without those of busy sub-groups."""
    held = busy(inputs, fields)
    return [i for i in inputs if group_key(i.metadata, fields) not in held]


def regroup(inputs: Sequence[StageInput], fields: Sequence[str]) -> list[str]:
    """Keys of processed inputs to run again because their sub-group gained new inputs
    (a sub-group is run whole: its older products are superseded by the new run). A
    sub-group a job holds inputs of now is left until that job ends."""
    held = busy(inputs, fields)
    grown = {
        group_key(i.metadata, fields)
        for i in inputs
        if i.allocation.state is InputState.UNALLOCATED
    } - held
    return [
        i.key
        for i in sorted(inputs, key=lambda i: i.seq)
        if i.allocation.state is InputState.PROCESSED and group_key(i.metadata, fields) in grown
    ]


def reopened(inputs: Sequence[StageInput], keys: Sequence[str]) -> list[StageInput]:
    """``inputs`` with those of ``keys`` back in the gap (as ``rerun_group`` wrote them)."""
    chosen = set(keys)
    return [
        attrs.evolve(
            i,
            allocation=attrs.evolve(
                i.allocation, state=InputState.UNALLOCATED, allocations=0, job_id=None, reason=""
            ),
        )
        if i.key in chosen
        else i
        for i in inputs
    ]


def stage_version(script: str, params: Mapping[str, Any]) -> str:
    """A stage's version: sha256 (16 hex digits) over its script's identity (the content
    hash, or its library key when the engine's library holds it) and resolved parameters."""
    text = json.dumps({"script": script, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def version_of(record: RequestRecord, definition: Definition, stage_name: str) -> str:
    """The current version of stage ``stage_name`` of a request: its RScript's content
    hash (the library key for a script of the engine's library, ``action:NAME`` for an
    action) and its parameters resolved with the request's."""
    stage = definition.stage(stage_name)
    if stage.rscript is not None:
        entry = record.scripts.get(stage.rscript) or {}
        script = str(entry.get("sha256") or entry.get("key") or stage.rscript)
    else:
        script = f"action:{stage.action}"
    return stage_version(script, stage_params(definition, stage_name, record.params))


def unused_group_fields(definition: Definition, catalog_keys: Iterable[str]) -> list[str]:
    """One warning line per ``group_by`` field of a stage consuming the query that no
    catalog entry has (``catalog_keys``: every metadata key the catalog holds, plus path,
    name and size). Such a stage puts every input in one sub-group."""
    known = set(catalog_keys)
    return [
        f"stages.{stage.name}.group_by: no catalog entry has field {field!r}"
        " (every input falls in one sub-group)"
        for stage in definition.stages
        if stage.consumes is not None and stage.consumes.from_query
        for field in stage.group_by
        if field not in known
    ]
