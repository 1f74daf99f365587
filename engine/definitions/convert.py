"""The private cattrs converter that turns merged TOML data into the definition models.

Strict: no value is coerced (``"3"`` is not an integer, ``1`` is not ``true``), unknown
keys are refused, and a failure becomes one line naming the path of the first problem:
``stages[1].max_inputs: expected an integer``. Only ``structure_document`` is public.
"""

from __future__ import annotations

import difflib
import enum
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from wfe.engine.definitions.errors import InvalidDefinition
from wfe.engine.definitions.model import (
    PRODUCT_TYPES,
    QUERY_SOURCE,
    WORK_ACTION,
    Backoff,
    Consumes,
    ParamSpec,
    Policy,
    Requirements,
    Stage,
    Timeouts,
    Workflow,
)
from wfe.engine.definitions.on_retry import BadRule, parse_rules
from wfe.engine.definitions.triggers import Trigger, parse_duration, parse_trigger
from wfe.protocols.broadcasts import TOPIC
from wfe.protocols.request import BadIdentifier, check_workflow_name


class _Bad(ValueError):
    """A hook's complaint; its text is the whole message for that path."""


@attrs.frozen(kw_only=True)
class StageDefaults:
    """``[stage_defaults]``: settings every stage starts from (validated on their own)."""

    params: dict[str, Any] = attrs.field(factory=dict)
    requires: Requirements = Requirements()
    retries: int = 0
    backoff: Backoff = Backoff()
    timeouts: Timeouts = Timeouts()
    priority: int = 0


@attrs.frozen(kw_only=True)
class Document:
    """The top level of a definition; ``[query]`` and ``[stage_defaults]`` are taken out
    first (the query has its own compiler; the defaults are merged into each stage)."""

    workflow: Workflow
    policy: Policy = Policy()
    params: dict[str, ParamSpec] = attrs.field(factory=dict)
    stages: tuple[Stage, ...] = ()
    # ``[reactors]``: a broadcast topic -> the action run, with the message as its parameters
    reactors: dict[str, str] = attrs.field(factory=dict)


# --- value hooks -----------------------------------------------------------------------------


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad("expected a number")
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad("expected an integer")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad("expected a string")
    return value


def _strict(kind: type[Any]) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _t: Any) -> Any:
        if kind is bool:
            if not isinstance(value, bool):
                raise _Bad("expected true or false")
            return value
        return {int: _integer, float: _number, str: _string}[kind](value)

    return hook


def _at_least(minimum: int, *, optional: bool = False) -> Callable[[Any, Any], int | None]:
    def hook(value: Any, _t: Any) -> int | None:
        if value is None and optional:
            return None
        number = _integer(value)
        if number < minimum:
            raise _Bad(f"must be at least {minimum}, not {number}")
        return number

    return hook


def _distance(value: Any, _t: Any) -> int | None:
    if value is None:
        return None
    number = _integer(value)
    if not 0 <= number <= 100:
        raise _Bad(f"a distance is 0 (local) to 100 (far), not {number}")
    return number


def _seconds(*, positive: bool, optional: bool = False) -> Callable[[Any, Any], float | None]:
    def hook(value: Any, _t: Any) -> float | None:
        if value is None and optional:
            return None
        number = _number(value)
        if not math.isfinite(number) or number < 0 or (positive and number == 0):
            raise _Bad(f"expected a {'positive' if positive else 'non-negative'} number of seconds")
        return number

    return hook


def _multiplier(value: Any, _t: Any) -> float:
    number = _number(value)
    if not math.isfinite(number) or number < 1:
        raise _Bad(f"must be at least 1, not {value}")
    return number


def _name(what: str) -> Callable[[Any, Any], str | None]:
    def hook(value: Any, _t: Any) -> str | None:
        if value is None:
            return None
        text = _string(value)
        if not text.strip() or text != text.strip():
            raise _Bad(f"expected a non-empty {what} name without surrounding spaces")
        return text

    return hook


_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ACTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_.]*")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _stage_name(value: Any, _t: Any) -> str:
    text = _string(value)
    if not _STAGE_NAME.fullmatch(text):
        raise _Bad(f"stage name {text!r}: use letters, digits, '_', '.', '-' (at most 64)")
    if text == QUERY_SOURCE:
        raise _Bad(f"{QUERY_SOURCE!r} is reserved (consumes = {QUERY_SOURCE!r} names the query)")
    return text


def _workflow_name(value: Any, _t: Any) -> str:
    try:
        return check_workflow_name(_string(value))
    except BadIdentifier as exc:
        raise _Bad(str(exc)) from None


def _namespace(value: Any, _t: Any) -> str:
    text = _string(value)
    if not _NAMESPACE.fullmatch(text):
        raise _Bad(f"namespace {text!r}: use letters, digits, '_', '.', '-' (at most 64)")
    return text


def _action(value: Any, _t: Any) -> str | None:
    if value is None:
        return None
    text = _string(value)
    if not _ACTION.fullmatch(text):
        raise _Bad(f"action {text!r}: expected <domain>.<action>, e.g. catalog.register")
    return text


def _reactors(value: Any, _t: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Bad('expected a table of topic = "<domain>.<action>"')
    reactors: dict[str, str] = {}
    for topic, action in value.items():
        if not TOPIC.fullmatch(topic):
            raise _Bad(f"topic {topic!r}: letters, digits, '_', '.', '-', starting with a letter")
        name = _action(action, None)
        if name is None:
            raise _Bad(f"{topic}: expected an action name")
        reactors[topic] = name
    return reactors


def _on_retry(value: Any, _t: Any) -> dict[str, str]:
    try:
        return parse_rules(value)
    except BadRule as exc:
        raise _Bad(str(exc)) from None


def _memory(value: Any, _t: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _Bad("expected a positive number of bytes")
        return value
    found = _MEMORY.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None:
        raise _Bad('expected bytes or a size like "512M" or "4G" (K, M, G, T: powers of 1024)')
    size = int(float(found.group(1)) * _UNITS[found.group(2).upper()])
    if size < 1:
        raise _Bad("expected a positive size")
    return size


def _strings(value: Any, _t: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _Bad("expected an array of strings")
    for item in value:
        if not isinstance(item, str) or not item:
            raise _Bad(f"expected an array of non-empty strings, found {item!r}")
    return tuple(value)


def _table(value: Any, _t: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad("expected a table")
    return dict(value)


def _consumes(value: Any, _t: Any) -> Consumes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Consumes(source=_stage_or_query(value))
    if not isinstance(value, dict):
        raise _Bad('expected "query", a stage name, or { stage = "...", types = [...] }')
    extra = sorted(set(value) - {"stage", "types"})
    if extra:
        raise _Bad(f"unknown key {extra[0]!r} (a consumes table has stage and types)")
    if "stage" not in value:
        raise _Bad('missing stage (consumes = { stage = "...", types = [...] })')
    source = _stage_or_query(value["stage"])
    types = _strings(value.get("types", []), None)
    for kind in types:
        if kind not in PRODUCT_TYPES:
            raise _Bad(
                f"unknown product type {kind!r} (expected one of {', '.join(PRODUCT_TYPES)})"
            )
    if types and source == QUERY_SOURCE:
        raise _Bad("types filter an upstream stage's products; the query has no types")
    return Consumes(source=source, types=types)


def _stage_or_query(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad('expected "query" or a stage name')
    return value


def _stages(value: Any, _t: Any) -> tuple[Stage, ...]:
    if not isinstance(value, list):
        raise _Bad("expected an array of tables ([[stages]])")
    for i, table in enumerate(value):
        if isinstance(table, dict) and "work" in table:
            given = [k for k in ("rscript", "action") if k in table]
            if given:
                raise _Bad(
                    f"[{i}]: a stage has one of rscript, action or work, not work and {given[0]}"
                )
    stages: tuple[Stage, ...] = _converter.get_structure_hook(tuple[Stage, ...])(value, _t)
    return tuple(_work_stage(s) for s in stages)


def _work_stage(stage: Stage) -> Stage:
    """A ``work`` stage as the action that runs it: ``works.stage`` with the bucket in params."""
    if stage.work is None:
        return stage
    if "pipeline" in stage.params:
        raise _Bad(f"stage {stage.name!r}: work names the bucket; params.pipeline is not allowed")
    return attrs.evolve(stage, action=WORK_ACTION, params={**stage.params, "pipeline": stage.work})


def _trigger(value: Any, _t: Any) -> Trigger:
    try:
        return parse_trigger(value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _duration(value: Any, _t: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _group_by(value: Any, _t: Any) -> tuple[str, ...]:
    fields = _strings(value, None)
    if len(set(fields)) != len(fields):
        raise _Bad(f"a field is named twice in {list(fields)}")
    return fields


def _enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    for member in cls:
        if member.value == value and type(member.value) is type(value):
            return member
    choices = ", ".join(repr(m.value) for m in cls)
    raise _Bad(f"expected one of {choices}, not {value!r}")


# --- the converter ---------------------------------------------------------------------------

_converter = cattrs.Converter(forbid_extra_keys=True)
for _kind in (int, float, str, bool):
    _converter.register_structure_hook(_kind, _strict(_kind))
_converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _strings)
_converter.register_structure_hook_func(lambda t: t == dict[str, Any], _table)
_converter.register_structure_hook_func(
    lambda t: isinstance(t, type) and issubclass(t, enum.Enum), _enum
)

_OVERRIDES: dict[type[Any], dict[str, Callable[[Any, Any], Any]]] = {
    Workflow: {
        "name": _workflow_name,
        "namespace": _namespace,
        "trigger": _trigger,
        "type": _name("request type"),
    },
    Policy: {"max_allocations": _at_least(1)},
    Requirements: {"cpus": _at_least(1), "memory": _memory, "site": _name("site")},
    Backoff: {"seconds": _seconds(positive=False), "multiplier": _multiplier},
    Timeouts: {
        "wait_agent": _seconds(positive=True, optional=True),
        "attempt": _seconds(positive=True, optional=True),
        "overall": _seconds(positive=True, optional=True),
    },
    Stage: {
        "name": _stage_name,
        "rscript": _name("RScript"),
        "action": _action,
        "work": _name("work pipeline"),
        "params": _table,
        "consumes": _consumes,
        "max_inputs": _at_least(1, optional=True),
        "max_distance": _distance,
        "retries": _at_least(0),
        "on_retry": _on_retry,
        "cooldown": _duration,
        "group_by": _group_by,
    },
    StageDefaults: {"retries": _at_least(0)},
    ParamSpec: {},
    Document: {"stages": _stages, "reactors": _reactors},
}


def _register(cls: type[Any]) -> None:
    fields: dict[str, Any] = {n: override(struct_hook=h) for n, h in _OVERRIDES[cls].items()}
    inner = make_dict_structure_fn(cls, _converter, **fields)

    def hook(value: Any, _t: Any) -> Any:
        if not isinstance(value, dict):
            raise _Bad("expected a table")
        return inner(value, cls)

    _converter.register_structure_hook(cls, hook)


for _cls in _OVERRIDES:
    _register(_cls)


# --- errors ----------------------------------------------------------------------------------

_EXTRA = "\x00"  # marks an unknown-key message whose key belongs in the path
_QUOTED_KEY = re.compile(r"\['((?:[^'\\]|\\.)*)'\]")


def _format(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, _Bad):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        key = sorted(exc.extra_fields)[0]
        known = [f.name for f in attrs.fields(exc.cl)] if exc.cl is not None else []
        if exc.cl is Document:
            known += ["query", "stage_defaults"]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
        return f"{_EXTRA}{key}{_EXTRA}unknown key ({hint})"
    return cattrs.v.format_exception(exc, _type)


def _one_line(message: str) -> str:
    """``msg @ $.a['b'][0]`` -> ``a.b[0]: msg``; an unknown key joins the path."""
    text, _, path = message.rpartition(" @ ")
    path = _QUOTED_KEY.sub(lambda m: "." + m.group(1), path.removeprefix("$"))
    if text.startswith(_EXTRA):
        key, text = text[1:].split(_EXTRA, 1)
        path = f"{path}.{key}"
    path = path.removeprefix(".")
    return f"{path}: {text}" if path else text


def structure_document(data: Mapping[str, Any]) -> Document:
    """Structure the merged data (``query`` removed). Raises ``InvalidDefinition``."""
    try:
        return _converter.structure(dict(data), Document)
    except Exception as exc:
        if isinstance(exc, cattrs.BaseValidationError | _Bad):
            messages = cattrs.transform_error(exc, path="$", format_exception=_format)
        else:
            raise
        first = _one_line(messages[0])
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        raise InvalidDefinition(first + more) from None


def structure_stage_defaults(data: Any) -> StageDefaults:
    """Validate ``[stage_defaults]`` on its own so errors name its path."""
    try:
        return _converter.structure(data, StageDefaults)
    except Exception as exc:
        if not isinstance(exc, cattrs.BaseValidationError | _Bad):
            raise
        messages = cattrs.transform_error(exc, path="$.stage_defaults", format_exception=_format)
        first = _one_line(messages[0])
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        raise InvalidDefinition(first + more) from None
