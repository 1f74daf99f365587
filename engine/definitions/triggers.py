"""Standing requests' settings in a definition: the trigger, cooldown durations, cron.

``[workflow] trigger`` is ``"manual"`` (the default: a request runs once and ends),
``"continuous"`` (the request stays on and re-evaluates when catalog entries are added or
changed) or ``{ cron = "0 3 * * *" }`` (it stays on and re-evaluates at each tick of a
five-field cron expression, read in UTC). Cron expressions are checked and stepped by
``croniter``; durations (``cooldown = "10m"``) are parsed here. Everything is pure.
"""

from __future__ import annotations

import datetime as _dt
import enum
import math
import re

import attrs
from croniter import CroniterBadCronError, CroniterBadDateError, croniter


class TriggerKind(enum.Enum):
    """What makes a request (re-)evaluate its inputs."""

    MANUAL = "manual"  # once, at approval; the request ends when its stages are done
    CONTINUOUS = "continuous"  # standing: on every committed catalog change
    CRON = "cron"  # standing: at each tick of a cron expression


@attrs.frozen(kw_only=True)
class Trigger:
    """``[workflow] trigger``; ``cron`` is set only for ``TriggerKind.CRON``."""

    kind: TriggerKind = TriggerKind.MANUAL
    cron: str | None = None

    @property
    def standing(self) -> bool:
        """True when a request of this trigger stays on (continuous or cron)."""
        return self.kind is not TriggerKind.MANUAL

    def describe(self) -> str:
        """``manual``, ``continuous`` or ``cron 0 3 * * *``."""
        return f"cron {self.cron}" if self.kind is TriggerKind.CRON else self.kind.value


class VersionPolicy(enum.Enum):
    """What a standing request does when a stage's version (script or parameters) changes."""

    KEEP = "keep"  # products of the old version stay current; only new inputs use the new one
    REPROCESS = "reprocess"  # old products turn stale; the stage and its downstream re-run


TRIGGER_HINT = 'expected "manual", "continuous" or { cron = "0 3 * * *" }'
DURATION_HINT = 'expected a duration like "0s", "90s", "10m", "1h30m" or "1d"'

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds in ``value``: a string of number-unit parts (``"1h30m"``; units s, m, h, d)
    or a non-negative number of seconds. Raises ``ValueError`` with a one-line reason."""
    if isinstance(value, bool):
        raise ValueError(f"{DURATION_HINT}, not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{DURATION_HINT}, not {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{DURATION_HINT}, not {value!r}")
    text = value.strip().lower()
    parts = _PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{DURATION_HINT}, not {value!r}")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def check_cron(expression: str) -> str:
    """``expression`` if it is a valid five-field cron expression; raises ``ValueError``."""
    text = " ".join(expression.split())
    if len(text.split(" ")) != 5:
        raise ValueError(
            f"bad cron expression {expression!r}: expected five fields "
            "(minute hour day-of-month month day-of-week)"
        )
    try:
        croniter(text, _EPOCH)
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as exc:
        raise ValueError(f"bad cron expression {expression!r}: {exc}") from None
    return text


def parse_trigger(value: object) -> Trigger:
    """The trigger ``value`` (from TOML) names; raises ``ValueError`` with a one-line reason."""
    if value == TriggerKind.MANUAL.value:
        return Trigger()
    if value == TriggerKind.CONTINUOUS.value:
        return Trigger(kind=TriggerKind.CONTINUOUS)
    if isinstance(value, dict):
        extra = sorted(set(value) - {"cron"})
        if extra:
            raise ValueError(f"unknown key {extra[0]!r} in trigger ({TRIGGER_HINT})")
        cron = value.get("cron")
        if not isinstance(cron, str):
            raise ValueError(f"trigger.cron: expected a string ({TRIGGER_HINT})")
        return Trigger(kind=TriggerKind.CRON, cron=check_cron(cron))
    raise ValueError(f"unknown trigger {value!r} ({TRIGGER_HINT})")


_EPOCH = _dt.datetime(2000, 1, 1, tzinfo=_dt.UTC)


def next_tick(expression: str, after: float) -> float:
    """The first tick of cron ``expression`` strictly after ``after`` (unix seconds, UTC)."""
    start = _dt.datetime.fromtimestamp(after, tz=_dt.UTC)
    found: float = croniter(expression, start).get_next(float)
    return found
