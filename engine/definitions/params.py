"""Request parameters: checking what a submitter gives against ``[params]``, and the
parameters each stage's RScript receives.

A definition declares the knobs a submitter may turn::

    [params.threshold]
    type = "float"          # str, int, float or bool
    default = 3.0           # no default: the parameter is required at submit
    description = "clip samples beyond this many sigma"

and a stage passes one on with a whole-value reference (the type is kept)::

    [[stages]]
    name = "calibrate"
    params = { gain = 1.5, threshold = "${threshold}" }
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from wfe.engine.definitions.errors import ParamError
from wfe.engine.definitions.model import Definition, ParamType
from wfe.engine.definitions.validate import PARAM_REF

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` (as from ``--param k=v``) to a dict; a later k wins.

    Raises ``ParamError`` for an item without ``=`` or with an empty name.
    """
    result: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ParamError(f"bad parameter {item!r}: expected NAME=VALUE")
        result[name.strip()] = value
    return result


def resolve_params(definition: Definition, given: Mapping[str, Any]) -> dict[str, Any]:
    """The request's parameters: defaults overlaid with ``given``, each of its type.

    A given string is converted to the declared type (``"3"`` -> 3 for int,
    ``"yes"``/``"no"`` for bool); other given values must already have it. Raises
    ``ParamError`` for an unknown name, a value that does not convert, or a required
    parameter missing.
    """
    specs = definition.params
    for name in given:
        if name not in specs:
            known = ", ".join(sorted(specs)) or "none declared"
            raise ParamError(f"unknown parameter {name!r} (known: {known})")
    result: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in given:
            result[name] = _convert(name, given[name], spec.type)
        elif spec.default is not None:
            result[name] = spec.default
        else:
            raise ParamError(f"parameter {name!r} is required (no default): give {name}=...")
    return result


def _convert(name: str, value: Any, kind: ParamType) -> Any:
    bad = ParamError(f"parameter {name!r}: {value!r} is not {kind.phrase}")
    if isinstance(value, str) and kind is not ParamType.STR:
        text = value.strip()
        if kind is ParamType.BOOL:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise bad
        try:
            number: int | float = int(text) if kind is ParamType.INT else float(text)
        except ValueError:
            raise bad from None
        if not math.isfinite(number):
            raise bad
        return number
    if kind is ParamType.BOOL:
        ok = isinstance(value, bool)
    elif isinstance(value, bool):
        ok = False
    elif kind is ParamType.INT:
        ok = isinstance(value, int)
    elif kind is ParamType.FLOAT:
        ok = isinstance(value, int | float) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise bad
    return value


def stage_params(
    definition: Definition, stage: str, request_params: Mapping[str, Any]
) -> dict[str, Any]:
    """The params a stage's RScript receives: the stage's ``params`` with every
    ``"${NAME}"`` replaced by the request's value (from ``resolve_params``).

    The engine adds the stage's inputs under ``inputs``. Raises ``KeyError`` for an
    unknown stage and ``ParamError`` if a referenced parameter is missing.
    """

    def substitute(value: Any) -> Any:
        if isinstance(value, str):
            found = PARAM_REF.fullmatch(value)
            if found is None:
                return value
            if found.group(1) not in request_params:
                raise ParamError(f"stage {stage!r}: parameter {found.group(1)!r} has no value")
            return request_params[found.group(1)]
        if isinstance(value, Mapping):
            return {k: substitute(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [substitute(v) for v in value]
        return value

    result: dict[str, Any] = substitute(definition.stage(stage).params)
    return result
