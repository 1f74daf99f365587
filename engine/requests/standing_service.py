"""The standing part of the requests service: stages that never end, new definitions
for running requests, and what consoles show of them.

``StandingRequests`` works for ``RequestService`` (it reads and writes through it): the
service's step hands a standing request's stages to ``stages``, the console's verbs reach
``update`` and ``view`` through the service. The pure decisions are in
``wfe.engine.requests.standing``; the timing in ``standing_clock``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from wfe.engine.definitions import (
    Definition,
    GitInfo,
    VersionPolicy,
    build_definition,
    downstream,
    resolve_params,
    topological_order,
)
from wfe.engine.repository import requests as store
from wfe.engine.repository import standing as standing_store
from wfe.engine.repository.products import stage_products
from wfe.engine.repository.rowtypes import Conn, JsonObject, JsonValue
from wfe.engine.requests import catalog, scripts, standing
from wfe.engine.requests.batches import WITHDRAW_PREFIX
from wfe.engine.requests.catalog import CatalogMatch
from wfe.engine.requests.errors import SubmitError
from wfe.engine.requests.model import ONCE, RequestRecord, Snapshot, StageState, product_key
from wfe.engine.runtime.clock import wall_now

if TYPE_CHECKING:
    from wfe.engine.requests.service import RequestService
    from wfe.engine.runtime.actions import ActionRunner


class StandingRequests:
    """Standing requests' stages, updates and views, for the requests service."""

    def __init__(self, service: RequestService) -> None:
        self.service = service
        self.repo = service.repo
        self.clock = service.standing

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
        """Give standing request ``rid`` (running or paused) a new version of its definition:
        changed scripts or stage parameters. Stages whose version changed under
        ``version_policy = "reprocess"`` run their inputs again and their products (and
        everything made from them downstream) turn stale; under "keep", only inputs still to
        come use the new version. Raises ``SubmitError`` / ``DefinitionError`` (one line)
        before anything is stored: the definition must have the same workflow, trigger
        kind, stages and dependencies."""
        old_record = await self.service.get(rid)
        old = self.service.definition_of(await self.repo.read(store.read_snapshot(rid)))
        if not old.standing:
            raise SubmitError(f"request {rid}: only a standing request takes a new definition")
        gitinfo = None
        if git:
            try:
                gitinfo = GitInfo(
                    commit=str(git["commit"]), path=str(git["path"]), dirty=bool(git["dirty"])
                )
            except (KeyError, TypeError):
                raise SubmitError("git: expected commit, path and dirty") from None
        new = build_definition(expanded, sources=tuple(str(s) for s in sources), git=gitinfo)
        problem = incompatible(old, new)
        if problem:
            raise SubmitError(f"request {rid}: {problem}")
        resolve_params(new, dict(old_record.params))
        stored, from_library = scripts.check_submission(
            new,
            old_record.params,
            namespace=old_record.namespace,
            bundled=scripts.parse_bundled(scripts_text or {}),
            library=self.service.scripts,
            action_known=action_known(self.service.runner),
        )
        mapping: dict[str, Any] = {
            n: {"key": k, "sha256": sha} for n, (k, sha, _) in stored.items()
        }
        mapping.update({n: {"key": k, "sha256": None} for n, k in from_library.items()})
        future = attrs.evolve(old_record, scripts=mapping)
        changed = [
            name
            for name in topological_order(new)
            if standing.version_of(old_record, old, name) != standing.version_of(future, new, name)
        ]
        reprocess = [n for n in changed if new.stage(n).version_policy is VersionPolicy.REPROCESS]
        below = {d for n in reprocess for d in downstream(new, n)} - set(reprocess)
        record = await self.repo.write(
            standing_store.update_definition(
                rid,
                new,
                stored,
                from_library,
                changed=changed,
                reprocess=reprocess,
                downstream=[n for n in topological_order(new) if n in below],
                by=by,
            )
        )
        scripts.register(self.service.scripts, stored)
        self.service.remember(new)
        # Jobs of the old version still running in a reprocessed stage would make products
        # of a version that is gone: they are withdrawn (their inputs wait for the new one).
        snap = await self.repo.read(store.read_snapshot(rid))
        for batch in snap.batches:
            if batch.stage in reprocess and batch.stop is None:
                await self.service.batches.stop(batch, f"{WITHDRAW_PREFIX}updated: new version")
        self.service.poke(rid)
        return record

    async def view(self, rid: str) -> JsonObject | None:
        """What consoles show of a standing request (None for any other): its trigger and
        next cron tick, and per stage its gap, cooldown, last round and next possible
        round (unix times; rounds since the engine started). Raises ``UnknownRequest``."""
        snap = await self.repo.read(store.read_snapshot(rid))
        definition = self.service.definition_of(snap)
        if not definition.standing:
            return None
        now, wall = trio.current_time(), wall_now()

        def at(t: float | None) -> float | None:
            return None if t is None else wall + (t - now)

        stages: list[JsonValue] = []
        for name, record in snap.stages.items():
            stage = definition.stage(name)
            last = self.clock.last_round(rid, name)
            gap = len(standing.gap(snap.inputs.get(name, ())))
            waiting = self.clock.waiting_until(rid, name)
            if waiting is None and gap and last is not None:
                waiting = max(now, last + stage.cooldown)
            stages.append(
                {
                    "stage": name,
                    "state": record.state.value,
                    "gap": gap,
                    "running": sum(1 for b in snap.batches if b.stage == name),
                    "cooldown": stage.cooldown,
                    "last_round": at(last),
                    "next_round": at(waiting) if gap else None,
                    "version_policy": stage.version_policy.value,
                    "version": standing.version_of(snap.request, definition, name),
                }
            )
        return {
            "trigger": definition.workflow.trigger.describe(),
            "next_tick": at(self.clock.next_tick(rid)),
            "stages": stages,
        }

    async def stages(self, snap: Snapshot, definition: Definition) -> bool:
        """A standing request's stages: start them all at once, then add the inputs they
        lack: new catalog matches (when the trigger asks for a refresh) and new products of
        the stages they consume. True if anything was written."""
        rid = snap.request.id
        for name, record in snap.stages.items():
            if record.state is StageState.WAITING:
                stage = definition.stage(name)
                once: list[CatalogMatch] | None = None
                if stage.consumes is None:
                    once = [(ONCE, "", {})]
                await self.repo.write(store.set_stage(rid, name, StageState.RUNNING, inputs=once))
                return True
        found: list[CatalogMatch] | None = None
        if definition.query is not None and self.clock.refresh_due(rid):
            found = await self.repo.read(catalog.find(definition.query))
        changed = False
        for name in snap.stages:
            stage = definition.stage(name)
            if stage.consumes is None:
                continue
            if stage.consumes.from_query:
                if found is None:
                    continue
                matches = found
                again = await self.repo.read(standing_store.changed_inputs(rid, name))
                if again:  # entries with new content: their inputs run again
                    below = downstream(definition, name)
                    await self.repo.write(standing_store.rerun_changed(rid, name, again, below))
                    changed = True
            else:
                matches = await self.repo.read(
                    upstream_products(rid, stage.consumes.source, stage.consumes.types)
                )
            present = (i.key for i in snap.inputs.get(name, ()))
            new = standing.new_matches(present, matches)
            if new:
                await self.repo.write(store.add_stage_inputs(rid, name, new))
                changed = True
        return changed


def incompatible(old: Definition, new: Definition) -> str:
    """Why ``new`` can't replace ``old`` under a running request ("" when it can)."""
    if new.name != old.name:
        return f"the new definition is workflow {new.name!r}, not {old.name!r}"
    if new.workflow.trigger.kind is not old.workflow.trigger.kind:
        return (
            f"the trigger changed from {old.workflow.trigger.describe()} to "
            f"{new.workflow.trigger.describe()} (submit a new request instead)"
        )
    shape = {s.name: (s.depends_on, s.consumes) for s in old.stages}
    if shape != {s.name: (s.depends_on, s.consumes) for s in new.stages}:
        return "the stages or what they consume changed (submit a new request instead)"
    return ""


def action_known(runner: ActionRunner | None) -> Callable[[str], bool]:
    """Whether the action runner knows an action name (never, without a runner)."""

    def known(name: str) -> bool:
        if runner is None:
            return False
        try:
            runner.library.get(name)
        except LookupError:
            return False
        return True

    return known


def upstream_products(
    rid: str, stage: str, types: tuple[str, ...]
) -> Callable[[Conn], list[CatalogMatch]]:
    """Read: ``(input key, path, metadata)`` of the products of ``stage`` of the given types."""
    made = stage_products(rid, stage, types)

    def fn(conn: Conn) -> list[CatalogMatch]:
        return [(product_key(pid), path, meta) for pid, path, _, meta in made(conn)]

    return fn
