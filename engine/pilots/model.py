"""What pilots are for and what they ask for: a set of job requirements (``Need``), the
factory's limits (``Limits``), and the shape of a pilot for a need (``shape_for``).

Pure: no I/O. A ``Need`` is how the engine groups queued jobs (cpus, memory, site, tags: what
``wfe.engine.dispatch.scheduler.fits`` matches an agent on); ``storage`` is a preference, not
a requirement, and plays no part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from wfe.engine.errors import EngineError


class PilotError(EngineError, ValueError):
    """A pilot setting or record is not valid; the message names it."""


@attrs.frozen(kw_only=True)
class Need:
    """A set of requirements that queued jobs share."""

    cpus: int = 1
    memory: int | None = None  # bytes per job
    site: str | None = None
    tags: tuple[str, ...] = ()

    @classmethod
    def of(cls, requirements: Mapping[str, Any]) -> Need:
        """The need of a job with these (decoded) requirements."""
        memory = requirements.get("memory")
        site = requirements.get("site")
        return cls(
            cpus=int(requirements.get("cpus", 1)),
            memory=None if memory is None else int(memory),
            site=None if site is None else str(site),
            tags=tuple(sorted(str(t) for t in requirements.get("tags", ()))),
        )

    @property
    def sort_key(self) -> tuple[int, int, str, tuple[str, ...]]:
        return (self.cpus, self.memory or 0, self.site or "", self.tags)

    def as_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"cpus": self.cpus}
        if self.memory is not None:
            data["memory"] = self.memory
        if self.site is not None:
            data["site"] = self.site
        if self.tags:
            data["tags"] = list(self.tags)
        return data

    @classmethod
    def from_data(cls, data: Any, *, where: str = "requirements") -> Need:
        """A need from JSON data; raises ``PilotError`` naming the bad field."""
        if not isinstance(data, dict):
            raise PilotError(f"{where}: expected an object")
        unknown = sorted(set(data) - {"cpus", "memory", "site", "tags"})
        if unknown:
            raise PilotError(f"{where}.{unknown[0]}: unknown (known: cpus, memory, site, tags)")
        cpus, memory, site, tags = (data.get(k) for k in ("cpus", "memory", "site", "tags"))
        if cpus is not None and (not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1):
            raise PilotError(f"{where}.cpus: expected a positive integer, got {cpus!r}")
        if memory is not None and (
            not isinstance(memory, int) or isinstance(memory, bool) or memory < 1
        ):
            raise PilotError(f"{where}.memory: expected a positive number of bytes, got {memory!r}")
        if site is not None and not isinstance(site, str):
            raise PilotError(f"{where}.site: expected a string, got {site!r}")
        if tags is not None and (
            not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
        ):
            raise PilotError(f"{where}.tags: expected an array of strings")
        return cls.of(data)


@attrs.frozen(kw_only=True)
class Limits:
    """What one factory may submit: its site and tags, each pilot's size, how many at most.

    A pilot gets ``cpus`` slots (more when a job needs more, up to ``max_cpus``) and offers
    each slot the memory its jobs need (``memory`` when they say nothing, up to
    ``max_memory``); it lives at most ``walltime`` seconds and leaves after ``idle_exit``
    seconds without work.
    """

    max_pilots: int = 10
    site: str = "local"
    tags: tuple[str, ...] = ()
    cpus: int = 1
    max_cpus: int = 64
    memory: int = 1024**3  # bytes per slot when jobs say nothing
    max_memory: int = 64 * 1024**3  # bytes per slot at most
    walltime: float = 3600.0
    idle_exit: float = 120.0

    def __attrs_post_init__(self) -> None:
        checks = (
            (self.max_pilots >= 0, f"max pilots must be 0 or more, not {self.max_pilots}"),
            (1 <= self.cpus <= self.max_cpus, f"cpus must be 1..{self.max_cpus}, not {self.cpus}"),
            (
                1 <= self.memory <= self.max_memory,
                f"memory must be 1..{self.max_memory} bytes, not {self.memory}",
            ),
            (
                math.isfinite(self.walltime) and self.walltime >= 120,
                f"walltime must be at least 120 seconds, not {self.walltime:g}",
            ),
            (
                math.isfinite(self.idle_exit) and 0 < self.idle_exit < self.walltime,
                f"idle exit must be above 0 and below the walltime, not {self.idle_exit:g}",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise PilotError(message)


@attrs.frozen(kw_only=True)
class Shape:
    """What one pilot for a need asks the batch system for, and offers the engine."""

    cpus: int  # slots, one CPU each
    memory: int  # bytes per slot
    site: str
    tags: tuple[str, ...]
    walltime: float
    idle_exit: float

    @property
    def memory_mb(self) -> int:
        """The batch job's memory: every slot's, in MiB (rounded up)."""
        return -(-self.cpus * self.memory // 1024**2)

    def jobs(self, need: Need) -> int:
        """How many jobs of ``need`` one such pilot runs at once."""
        return self.cpus // need.cpus

    def as_data(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False) | {"tags": list(self.tags)}


def shape_for(need: Need, limits: Limits) -> Shape | str:
    """The pilot that serves ``need`` under ``limits``, or why this factory cannot serve it."""
    if need.site is not None and need.site != limits.site:
        return f"site {need.site!r} is not this factory's ({limits.site!r})"
    missing = sorted(set(need.tags) - set(limits.tags))
    if missing:
        return f"tag {missing[0]!r} is not offered by this factory's pilots"
    if need.cpus > limits.max_cpus:
        return f"{need.cpus} cpus is more than a pilot has ({limits.max_cpus})"
    memory = limits.memory if need.memory is None else need.memory
    if memory > limits.max_memory:
        return f"{memory} bytes of memory is more than a pilot's slot has ({limits.max_memory})"
    cpus = max(need.cpus, limits.cpus)
    return Shape(
        cpus=cpus - cpus % need.cpus,
        memory=memory,
        site=limits.site,
        tags=limits.tags,
        walltime=limits.walltime,
        idle_exit=limits.idle_exit,
    )
