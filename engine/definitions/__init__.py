"""Workflow definitions: TOML with includes, checked into frozen models.

The pure, I/O-light core the CLI, the repository and the scheduler call::

    definition = load_definition("examples/pipeline/pipeline.toml")
    topological_order(definition)        # ["calibrate", "grid", "map"]
    params = resolve_params(definition, parse_assignments(["threshold=2.5"]))
    stage_params(definition, "calibrate", params)
    definition.query.matches({"kind": "raw", "run": 101})

See ``docs/definitions.md`` for the format.
"""

from __future__ import annotations

from wfe.engine.definitions.config import (
    NO_CONFIG,
    WFE_TABLES,
    apply_overlay,
    config_of,
    frozen,
)
from wfe.engine.definitions.dump import dump_toml
from wfe.engine.definitions.errors import (
    DagError,
    DefinitionError,
    DefinitionSyntaxError,
    IncludeError,
    InvalidDefinition,
    ParamError,
    QueryError,
    UnknownRScript,
)
from wfe.engine.definitions.loader import (
    NAMESPACE_REQUIRED,
    build_definition,
    canonical_json,
    git_info,
    load_definition,
)
from wfe.engine.definitions.merge import deep_merge, expand_includes
from wfe.engine.definitions.model import (
    INPUTS_PARAM,
    PRODUCT_TYPES,
    QUERY_SOURCE,
    Approval,
    Backoff,
    Consumes,
    Definition,
    GitInfo,
    Lifetime,
    OnStageFailure,
    ParamSpec,
    ParamType,
    Policy,
    Requirements,
    Stage,
    Timeouts,
    Workflow,
)
from wfe.engine.definitions.params import parse_assignments, resolve_params, stage_params
from wfe.engine.definitions.query import Op, Query, Rule, compile_query
from wfe.engine.definitions.triggers import (
    Trigger,
    TriggerKind,
    VersionPolicy,
    next_tick,
    parse_duration,
)
from wfe.engine.definitions.validate import (
    check_actions,
    check_rscripts,
    downstream,
    require_known,
    topological_order,
    upstream,
)

__all__ = [
    "INPUTS_PARAM",
    "NAMESPACE_REQUIRED",
    "NO_CONFIG",
    "PRODUCT_TYPES",
    "QUERY_SOURCE",
    "Approval",
    "Backoff",
    "Consumes",
    "DagError",
    "Definition",
    "DefinitionError",
    "DefinitionSyntaxError",
    "GitInfo",
    "IncludeError",
    "InvalidDefinition",
    "Lifetime",
    "OnStageFailure",
    "Op",
    "ParamError",
    "ParamSpec",
    "ParamType",
    "Policy",
    "Query",
    "QueryError",
    "Requirements",
    "Rule",
    "Stage",
    "Timeouts",
    "Trigger",
    "TriggerKind",
    "UnknownRScript",
    "WFE_TABLES",
    "VersionPolicy",
    "Workflow",
    "apply_overlay",
    "build_definition",
    "canonical_json",
    "check_actions",
    "check_rscripts",
    "compile_query",
    "config_of",
    "deep_merge",
    "downstream",
    "dump_toml",
    "expand_includes",
    "frozen",
    "git_info",
    "load_definition",
    "next_tick",
    "parse_duration",
    "parse_assignments",
    "require_known",
    "resolve_params",
    "stage_params",
    "topological_order",
    "upstream",
]
