"""The workflow definition as frozen attrs models.

``Definition`` is what the loader returns and what a request refers to: typed fields for
the engine to use, plus ``expanded`` (the merged TOML as plain JSON-ready data, the
stored form) and its ``sha256``. Everything here is built and checked by
``wfe.engine.definitions.loader``; constructing models by hand skips those checks.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from wfe.engine.definitions.query import Query
from wfe.engine.definitions.triggers import Trigger, VersionPolicy

#: The ``consumes`` source of a stage whose inputs come from the definition's query.
QUERY_SOURCE = "query"

#: Product types an RScript may report and a stage may consume.
PRODUCT_TYPES = ("science", "qa", "plot", "log")

#: The params key under which the engine hands a stage's inputs to its RScript.
INPUTS_PARAM = "inputs"


class Approval(enum.Enum):
    """Whether a person must approve a submitted request."""

    REQUIRED = "required"  # an operator approves (``wfe approve``)
    NONE = "none"  # the engine approves by policy right after submission


class OnStageFailure(enum.Enum):
    """What a failed stage does to its request."""

    FAIL = "fail"  # the request fails, naming the stage
    COMPLETE = "complete"  # the request completes, listing the failed stages


class Lifetime(enum.Enum):
    """The lifetime class of the products a stage makes."""

    FINAL = "final"  # kept
    INTERMEDIATE = "intermediate"  # may be purged under disk pressure ([storage] quota)


class ParamType(enum.Enum):
    """The type of a request parameter."""

    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"

    @property
    def phrase(self) -> str:
        """How an error names a value of this type: "an integer"..."""
        return {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
        }[self.value]


@attrs.frozen(kw_only=True)
class Workflow:
    """The ``[workflow]`` table: what this definition is and where it runs."""

    name: str
    namespace: str
    version: str = ""
    description: str = ""
    trigger: Trigger = Trigger()  # manual (runs once) or standing: continuous, cron
    # the kind of request ("simulation", "analysis", ...): one of wfe.toml's [request_types],
    # whose priority a request of it gets when its submitter gives none
    type: str | None = None
    # the workflow as code: the action `wfe simulate` runs (default workflows.<name>)
    action: str | None = None


@attrs.frozen(kw_only=True)
class Policy:
    """The ``[policy]`` table."""

    approval: Approval = Approval.REQUIRED
    on_stage_failure: OnStageFailure = OnStageFailure.FAIL
    max_allocations: int = 3  # times one input may be handed to a job before it fails


@attrs.frozen(kw_only=True)
class ParamSpec:
    """One request parameter (``[params.NAME]``); ``default`` None means required."""

    type: ParamType
    default: Any = None
    description: str = ""


@attrs.frozen(kw_only=True)
class Requirements:
    """What an agent must offer to run a stage's jobs."""

    cpus: int = 1
    memory: int | None = None  # bytes
    tags: tuple[str, ...] = ()  # the agent must have every one
    site: str | None = None


@attrs.frozen(kw_only=True)
class Backoff:
    """Delay before retry *n*: ``seconds * multiplier ** (n - 1)``."""

    seconds: float = 10.0
    multiplier: float = 2.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, not {retry}")
        return float(self.seconds * self.multiplier ** (retry - 1))


@attrs.frozen(kw_only=True)
class Timeouts:
    """Seconds; None leaves the limit to the engine's configuration."""

    wait_agent: float | None = None  # a job waits this long for a matching agent
    attempt: float | None = None  # one attempt runs at most this long
    overall: float | None = None  # all attempts of a job, waiting included


@attrs.frozen(kw_only=True)
class Consumes:
    """Where a stage's inputs come from: the query, or an upstream stage's products."""

    source: str  # QUERY_SOURCE or a stage name
    types: tuple[str, ...] = ()  # product types taken from a stage; empty takes all

    @property
    def from_query(self) -> bool:
        """True when the inputs come from the definition's ``[query]``."""
        return self.source == QUERY_SOURCE


#: The shipped action a ``work`` stage runs (engine/shipped_actions/works/stage).
WORK_ACTION = "works.stage"


@attrs.frozen(kw_only=True)
class Stage:
    """One ``[[stages]]`` entry, with ``[stage_defaults]`` already applied."""

    name: str
    after: tuple[str, ...] = ()
    rscript: str | None = None
    action: str | None = None
    # ``work = "calib"``: the stage runs on pull workers, one work per batch into that bucket;
    # the converter makes it the shipped action WORK_ACTION with ``pipeline`` in its params
    work: str | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    requires: Requirements = Requirements()
    consumes: Consumes | None = None
    max_inputs: int | None = None  # per job; None puts all inputs in one job
    retries: int = 0
    # how a retry after an out-of-memory end or a timeout changes the job, e.g.
    # {"memory": "x2"} (engine/definitions/on_retry.py); empty: retries run unchanged
    on_retry: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    backoff: Backoff = Backoff()
    timeouts: Timeouts = Timeouts()
    priority: int = 0
    # 0-100: its jobs read only replicas this near an agent's site ([sites] of wfe.toml);
    # None: any replica (the nearest is still preferred)
    max_distance: int | None = None
    cooldown: float = 0.0  # seconds: a standing stage starts at most one round per window
    group_by: tuple[str, ...] = ()  # one job per distinct value of these metadata fields
    version_policy: VersionPolicy = VersionPolicy.KEEP
    lifetime: Lifetime = Lifetime.FINAL  # of the products this stage makes

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Upstream stages: ``after`` plus the stage named by ``consumes``, in order."""
        names = list(self.after)
        if self.consumes is not None and not self.consumes.from_query:
            if self.consumes.source not in names:
                names.append(self.consumes.source)
        return tuple(names)


@attrs.frozen(kw_only=True)
class GitInfo:
    """Where the main definition file lives in git."""

    commit: str  # HEAD of the work tree
    path: str  # POSIX path relative to the work tree root
    dirty: bool  # the file differs from HEAD (modified or untracked)


@attrs.frozen(kw_only=True)
class Definition:
    """A checked, fully expanded workflow definition. Immutable."""

    workflow: Workflow
    policy: Policy
    params: Mapping[str, ParamSpec] = attrs.field(hash=False)
    query: Query | None
    stages: tuple[Stage, ...]
    # ``[reactors]``: broadcast topic -> the action started with the message as its parameters
    reactors: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    expanded: Mapping[str, Any] = attrs.field(hash=False)  # the merged TOML, JSON-ready
    # the workflow's configuration tables (every top-level table not wfe's), as merged
    config: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    sha256: str  # of ``canonical_json(expanded)``
    sources: tuple[str, ...] = ()  # absolute paths of the files merged, main file last
    git: GitInfo | None = None

    @property
    def name(self) -> str:
        """The workflow name (first part of request ids)."""
        return self.workflow.name

    @property
    def namespace(self) -> str:
        """The namespace requests of this definition run in."""
        return self.workflow.namespace

    @property
    def approval_required(self) -> bool:
        """True when a person must approve requests of this definition."""
        return self.policy.approval is Approval.REQUIRED

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stages' names in definition order."""
        return tuple(s.name for s in self.stages)

    @property
    def standing(self) -> bool:
        """True when requests of this definition stay on (trigger continuous or cron)."""
        return self.workflow.trigger.standing

    def stage(self, name: str) -> Stage:
        """The stage called ``name``. Raises ``KeyError`` if there is none."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"workflow {self.name}: no stage {name!r}")
