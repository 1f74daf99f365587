"""Rules a structured definition must follow, and the stage DAG.

``check_document`` runs every rule the types alone can't express and raises the first
broken one as a one-line ``InvalidDefinition`` (``DagError`` for the DAG) naming its
path. ``topological_order`` gives the stages in a deterministic run order;
``check_rscripts`` / ``check_actions`` report names a registry does not know.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from wfe.engine.definitions.errors import DagError, InvalidDefinition, UnknownRScript
from wfe.engine.definitions.model import INPUTS_PARAM, Definition, ParamSpec, ParamType, Stage

#: A stage parameter whose whole value is ``"${NAME}"`` takes request parameter NAME.
PARAM_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_document(
    stages: Sequence[Stage],
    params: Mapping[str, ParamSpec],
    *,
    has_query: bool,
    standing: bool = False,
) -> None:
    """Check stages and params against each other (``standing``: the trigger is continuous
    or cron). Raises ``InvalidDefinition``."""
    for name, spec in params.items():
        _check_param(name, spec)
    if not stages:
        raise InvalidDefinition("stages: at least one [[stages]] is required")
    seen: set[str] = set()
    for i, stage in enumerate(stages):
        if stage.name in seen:
            raise DagError(f"stages[{i}].name: duplicate stage {stage.name!r}")
        seen.add(stage.name)
        _check_stage(i, stage, params, has_query=has_query)
        _check_standing(i, stage, standing=standing)
    for i, stage in enumerate(stages):
        for upstream in stage.after:
            if upstream not in seen:
                raise DagError(
                    f"stages[{i}].after: stage {stage.name!r} depends on unknown stage {upstream!r}"
                )
        if stage.consumes is not None and not stage.consumes.from_query:
            if stage.consumes.source not in seen:
                raise DagError(
                    f"stages[{i}].consumes: stage {stage.name!r} consumes unknown stage "
                    f"{stage.consumes.source!r}"
                )
    order_stages(stages)


def _check_param(name: str, spec: ParamSpec) -> None:
    if not _PARAM_NAME.fullmatch(name):
        raise InvalidDefinition(f"params.{name}: a parameter name is letters, digits and '_'")
    if spec.default is not None and not _fits(spec.default, spec.type):
        raise InvalidDefinition(f"params.{name}.default: expected {spec.type.phrase}")


def _check_stage(i: int, stage: Stage, params: Mapping[str, ParamSpec], *, has_query: bool) -> None:
    where = f"stages[{i}]"
    if (stage.rscript is None) == (stage.action is None):
        found = "both" if stage.rscript is not None else "neither"
        raise InvalidDefinition(
            f"{where}: stage {stage.name!r} needs exactly one of rscript, action or work ({found} set)"
        )
    if stage.max_inputs is not None and stage.consumes is None:
        raise InvalidDefinition(
            f"{where}.max_inputs: stage {stage.name!r} has no inputs "
            '(add consumes = "query" or the name of an upstream stage)'
        )
    if stage.max_distance is not None and (stage.consumes is None or stage.action is not None):
        raise InvalidDefinition(
            f"{where}.max_distance: stage {stage.name!r} runs no RScript on inputs, so it reads"
            " no replicas (give it consumes and an rscript)"
        )
    if stage.on_retry and not stage.retries:
        raise InvalidDefinition(
            f"{where}.on_retry: stage {stage.name!r} has retries = 0, so no retry to change"
        )
    if "memory" in stage.on_retry and stage.requires.memory is None:
        raise InvalidDefinition(
            f"{where}.on_retry.memory: stage {stage.name!r} asks for no memory to change "
            "(set requires.memory)"
        )
    if "max_inputs" in stage.on_retry and (stage.consumes is None or stage.rscript is None):
        raise InvalidDefinition(
            f"{where}.on_retry.max_inputs: stage {stage.name!r} runs no RScript on inputs, "
            "so there are no inputs to split (give it consumes and an rscript)"
        )
    if "max_inputs" in stage.on_retry and stage.group_by:
        raise InvalidDefinition(
            f"{where}.on_retry.max_inputs: stage {stage.name!r} runs one job per sub-group "
            "(group_by), which a split would cut in two: choose one"
        )
    if stage.consumes is not None and stage.consumes.from_query and not has_query:
        raise InvalidDefinition(
            f"{where}.consumes: stage {stage.name!r} consumes the query but there is no [query]"
        )
    if INPUTS_PARAM in stage.params:
        raise InvalidDefinition(
            f"{where}.params.{INPUTS_PARAM}: reserved (the engine passes a stage's inputs there)"
        )
    for path, ref in param_refs(stage.params, f"{where}.params"):
        if ref not in params:
            raise InvalidDefinition(
                f"{path}: refers to unknown parameter {ref!r} (add [params.{ref}])"
            )


def _check_standing(i: int, stage: Stage, *, standing: bool) -> None:
    where = f"stages[{i}]"
    if stage.cooldown and not standing:
        raise InvalidDefinition(
            f"{where}.cooldown: only standing requests have cooldowns "
            '(set [workflow] trigger = "continuous" or { cron = "..." })'
        )
    if stage.group_by and stage.consumes is None:
        raise InvalidDefinition(
            f"{where}.group_by: stage {stage.name!r} has no inputs to group "
            '(add consumes = "query" or the name of an upstream stage)'
        )
    if stage.group_by and stage.max_inputs is not None:
        raise InvalidDefinition(
            f"{where}.group_by: stage {stage.name!r} has both group_by and max_inputs "
            "(a job takes one sub-group, or at most max_inputs inputs: choose one)"
        )


def param_refs(value: Any, path: str) -> Iterable[tuple[str, str]]:
    """Every ``"${NAME}"`` reference inside ``value``, as ``(path, NAME)``."""
    if isinstance(value, str):
        found = PARAM_REF.fullmatch(value)
        if found:
            yield path, found.group(1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from param_refs(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from param_refs(item, f"{path}[{index}]")


def _fits(value: Any, kind: ParamType) -> bool:
    if kind is ParamType.BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is ParamType.INT:
        return isinstance(value, int)
    if kind is ParamType.FLOAT:
        return isinstance(value, int | float)
    return isinstance(value, str)


# --- the DAG ---------------------------------------------------------------------------------


def order_stages(stages: Sequence[Stage]) -> list[str]:
    """Stage names in run order: every stage after all it depends on; ties keep the
    definition's order. Raises ``DagError`` naming a cycle (``a -> b -> a``, where each
    arrow points downstream). Assumes every dependency names a stage."""
    names = [s.name for s in stages]
    downstream: dict[str, list[str]] = {n: [] for n in names}
    waiting: dict[str, int] = {}
    for stage in stages:
        deps = set(stage.depends_on)
        waiting[stage.name] = len(deps)
        for dep in deps:
            downstream[dep].append(stage.name)
    order: list[str] = []
    ready = [n for n in names if waiting[n] == 0]
    while ready:
        name = min(ready, key=names.index)
        ready.remove(name)
        order.append(name)
        for child in downstream[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) < len(names):
        raise DagError(f"stages: cycle: {' -> '.join(_find_cycle(names, downstream))}")
    return order


def _find_cycle(names: list[str], downstream: dict[str, list[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for child in sorted(downstream[name], key=names.index):
            if state.get(child) == 1:
                return stack[stack.index(child) :] + [child]
            if child not in state:
                found = visit(child)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return None

    for name in names:
        if name not in state:
            found = visit(name)
            if found:
                return found
    raise AssertionError("order_stages found a cycle that _find_cycle did not")


def topological_order(definition: Definition) -> list[str]:
    """The stage names of ``definition`` in a deterministic run order."""
    return order_stages(definition.stages)


def upstream(definition: Definition, name: str) -> list[str]:
    """Every stage ``name`` depends on, directly or not, in run order."""
    needed: set[str] = set()
    todo = [name]
    while todo:
        for dep in definition.stage(todo.pop()).depends_on:
            if dep not in needed:
                needed.add(dep)
                todo.append(dep)
    return [n for n in topological_order(definition) if n in needed]


def downstream(definition: Definition, name: str) -> list[str]:
    """Every stage that depends on ``name``, directly or not, in run order (the stages a
    failure of ``name`` makes not runnable)."""
    return [n for n in topological_order(definition) if name in upstream(definition, n)]


# --- names known elsewhere ------------------------------------------------------------------


def check_rscripts(definition: Definition, known: Callable[[str], bool]) -> list[str]:
    """One line per stage whose RScript ``known`` does not recognise; empty when all are."""
    return [
        f"stage {s.name!r}: unknown RScript {s.rscript!r}"
        for s in definition.stages
        if s.rscript is not None and not known(s.rscript)
    ]


def check_actions(definition: Definition, known: Callable[[str], bool]) -> list[str]:
    """One line per stage or reactor whose action ``known`` does not recognise; empty when
    all are."""
    return [
        f"stage {s.name!r}: unknown action {s.action!r}"
        for s in definition.stages
        if s.action is not None and not known(s.action)
    ] + [
        f"reactors.{topic}: unknown action {action!r}"
        for topic, action in definition.reactors.items()
        if not known(action)
    ]


def require_known(
    definition: Definition,
    *,
    rscript: Callable[[str], bool] | None = None,
    action: Callable[[str], bool] | None = None,
) -> None:
    """Raise ``UnknownRScript`` (one line, every unknown name) unless all are known."""
    problems = []
    if rscript is not None:
        problems += check_rscripts(definition, rscript)
    if action is not None:
        problems += check_actions(definition, action)
    if problems:
        raise UnknownRScript("; ".join(problems))
