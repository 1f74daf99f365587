"""``Work``: one unit of work in a pipeline's bucket, with exactly the CHIME/FRB payload fields.

A work is what any code deposits (``pipeline`` and ``parameters`` at least), what a pull
worker withdraws and performs (``function`` as ``module.function``, or a shell ``command``;
never both), and what stays queryable when done (``results``, ``products``, ``plots``).
``payload(work)`` is the dictionary as stored; ``parse_work(payload)`` is the one way in
from outside, and refuses a bad payload with one line that names the field::

    priority: must be 1..5, got 9

Priority: **5 is the highest** (as in the seed's system); a bucket hands out its highest
priority first, then its oldest. Status: created -> queued -> running -> success | failure,
or cancelled by an operator; a running work whose lease runs out (or that fails) goes back
to queued with ``attempt + 1`` while ``attempt <= retries``, so a work runs at most
``retries + 1`` times.
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
from typing import Any

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from wfe.engine.errors import EngineError

#: The highest and lowest priority; 5 is served first.
PRIORITY_HIGHEST = 5
PRIORITY_LOWEST = 1
#: The longest timeout a work may ask for (seconds): one week.
TIMEOUT_MAX = 7 * 24 * 3600
RETRIES_MAX = 100

_PIPELINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")


class WorkError(EngineError, ValueError):
    """A work is invalid, or a bucket operation is refused; the message is one line."""


class UnknownWork(WorkError, LookupError):
    """No work has that id."""


class WorkStatus(enum.StrEnum):
    """Where a work is in its life."""

    CREATED = "created"  # made, not deposited yet (never stored)
    QUEUED = "queued"  # in its bucket, waiting for a worker
    RUNNING = "running"  # withdrawn: a worker holds its lease
    SUCCESS = "success"  # done: results recorded
    FAILURE = "failure"  # failed its last allowed attempt (the reason in results.error)
    CANCELLED = "cancelled"  # an operator took it out of its bucket


#: Statuses a work never leaves.
TERMINAL = frozenset({WorkStatus.SUCCESS, WorkStatus.FAILURE, WorkStatus.CANCELLED})


def _rule(check: Any, rule: str) -> Any:
    """An attrs validator raising ``WorkError("<field>: <rule>, got <value>")``."""

    def validate(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not check(value):
            raise WorkError(f"{attribute.name}: {rule}, got {_show(value)}")

    return validate


def _json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _now() -> float:
    return time.time()  # wall-clock: a creation stamp, never used for timing


@attrs.frozen(kw_only=True)
class Work:
    """A work item as stored; build one with ``parse_work`` (or keywords, validated)."""

    pipeline: str = attrs.field(
        validator=_rule(_PIPELINE.match, "must be 1-128 letters, digits, '_', '.', ':' or '-'")
    )
    parameters: dict[str, Any] | None = attrs.field(
        default=None, validator=_rule(_json, "must be JSON (an object of JSON values)")
    )
    results: Any = attrs.field(default=None, validator=_rule(_json, "must be JSON"))
    path: str = "."
    event: list[int] | None = None
    tags: list[str] | None = None
    group: list[str] | None = None
    timeout: int = attrs.field(
        default=3600,
        validator=_rule(lambda v: 1 <= v <= TIMEOUT_MAX, f"must be 1..{TIMEOUT_MAX} s"),
    )
    retries: int = attrs.field(
        default=2, validator=_rule(lambda v: 0 <= v <= RETRIES_MAX, f"must be 0..{RETRIES_MAX}")
    )
    priority: int = attrs.field(
        default=3,
        validator=_rule(
            lambda v: PRIORITY_LOWEST <= v <= PRIORITY_HIGHEST,
            f"must be {PRIORITY_LOWEST}..{PRIORITY_HIGHEST}",
        ),
    )
    products: list[str] | None = None
    plots: list[str] | None = None
    site: str = attrs.field(default="local", validator=_rule(bool, "must not be empty"))
    user: str | None = None
    archive: bool = True
    precursors: list[dict[str, str]] | None = None
    config: dict[str, Any] | None = attrs.field(
        default=None, validator=_rule(_json, "must be JSON (an object of JSON values)")
    )
    id: str | None = None
    creation: float | None = attrs.field(
        factory=_now, validator=_rule(math.isfinite, "must be a finite number")
    )
    start: float | None = None
    stop: float | None = None
    attempt: int = attrs.field(default=1, validator=_rule(lambda v: v >= 1, "must be at least 1"))
    status: WorkStatus = WorkStatus.CREATED
    function: str | None = attrs.field(
        default=None, validator=_rule(_FUNCTION.match, "must be module.function")
    )
    command: str | None = attrs.field(default=None, validator=_rule(bool, "must not be empty"))

    def __attrs_post_init__(self) -> None:
        if self.function is not None and self.command is not None:
            raise WorkError("function, command: give one of them, not both")


#: The payload's field names, in the seed's order (``function`` and ``command`` last).
FIELDS: tuple[str, ...] = tuple(a.name for a in attrs.fields(Work))

_converter = cattrs.Converter(forbid_extra_keys=True)


def _strict(kind: type, label: str) -> Any:
    def structure(value: Any, _: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {label}, got {_show(value)}")
        return value

    return structure


_converter.register_structure_hook(str, _strict(str, "a string"))
_converter.register_structure_hook(int, _strict(int, "an integer"))
_converter.register_structure_hook(float, _strict(float, "a number"))
_converter.register_structure_hook(bool, _strict(bool, "true or false"))
_converter.register_structure_hook(WorkStatus, lambda v, _: WorkStatus(v))
_converter.register_structure_hook(Any, lambda v, _: v)  # checked as JSON by the validators


def _first_error(exc: BaseException, path: str) -> str:
    """The first leaf error of a cattrs validation error, as ``path: message``."""
    if isinstance(exc, ForbiddenExtraKeysError):
        extra = sorted(exc.extra_fields)
        return f"{extra[0]}: unknown field (known: {', '.join(FIELDS)})"
    if isinstance(exc, ClassValidationError | IterableValidationError):
        groups = exc.group_exceptions()
        inner = groups[0] if groups[0] else groups[1]
        error, note = inner[0] if isinstance(inner[0], tuple) else (inner[0], None)
        step = getattr(note, "name", None)
        if step is None:
            step = getattr(note, "index", None)
            where = path if step is None else f"{path}[{step}]"
        else:
            where = step if not path else f"{path}.{step}"
        return _first_error(error, where)
    if isinstance(exc, WorkError):
        return str(exc)
    message = str(exc)
    if isinstance(exc, KeyError):
        message = "is required"
    elif isinstance(exc, ValueError) and "WorkStatus" in message:
        message = f"must be one of {', '.join(s.value for s in WorkStatus)}"
    elif not message.startswith("expected"):
        message = f"expected another type ({message})"
    return f"{path or 'work'}: {message}"


def parse_work(payload: Any) -> Work:
    """Validate ``payload`` (a dict of payload fields) into a ``Work``.

    Raises ``WorkError`` with one line naming the first bad field; nothing else happens.
    """
    if not isinstance(payload, dict):
        raise WorkError(f"work: expected an object of fields, got {_show(payload)}")
    if "pipeline" not in payload:
        raise WorkError("pipeline: is required")
    try:
        return _converter.structure(payload, Work)
    except WorkError:
        raise
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        raise WorkError(_first_error(exc, "")) from None
    except (TypeError, ValueError) as exc:
        raise WorkError(f"work: {exc}") from None


def payload(work: Work) -> dict[str, Any]:
    """The work as a JSON-ready dictionary (the stored form; ``status`` as its value)."""
    data: dict[str, Any] = _converter.unstructure(work)
    data["status"] = work.status.value
    return data


__all__ = [
    "FIELDS",
    "PRIORITY_HIGHEST",
    "PRIORITY_LOWEST",
    "TERMINAL",
    "UnknownWork",
    "Work",
    "WorkError",
    "WorkStatus",
    "parse_work",
    "payload",
]
