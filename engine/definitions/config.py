"""The workflow's own configuration: every top-level table that is not one of wfe's.

A definition's top level holds wfe's tables (``WFE_TABLES``) and, beside them, any number
of **configuration tables** of the workflow's choosing, as the seed's files have
(``[daq_state_machine]``, ``[fast_processing]``). They merge across includes like the rest
(key by key, later over earlier, the main file last), stay in the expanded form where they
were written, and reach tasklets as ``ctx.config``, read-only (``frozen``).

A configuration table whose name is close to one of wfe's (``[stage]``, ``[polcy]``) is
refused with a "did you mean": a typo must not silently become configuration.

``[testbed]`` is the seed's instance table: ``namespace`` there is the namespace requests
run in (over ``[workflow] namespace``). ``apply_overlay`` applies a ``testbed.toml`` at
submit: its ``[testbed]`` namespace, and its tables over the configuration tables of the
same name, recorded in the expanded ``[testbed]`` table.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from wfe.engine.definitions.errors import InvalidDefinition
from wfe.engine.definitions.merge import deep_merge, read_toml

#: The top-level tables wfe reads itself; any other table is the workflow's configuration.
WFE_TABLES = (
    "workflow",
    "policy",
    "params",
    "stages",
    "query",
    "stage_defaults",
    "testbed",
    "reactors",
)

#: Keys of ``[testbed]``: ``namespace`` (written), ``overlay`` and ``unused`` (recorded
#: by ``apply_overlay``).
TESTBED_KEYS = ("namespace", "overlay", "unused")

#: How close (difflib ratio) a table name must be to one of wfe's to be taken for a typo:
#: ``stage``/``stages`` is 0.91, ``polcy``/``policy`` 0.91, ``parameters``/``params`` 0.75.
NEAR_MISS = 0.8

#: Closer still for an overlay table against the definition's own configuration tables:
#: ``fast_procesing``/``fast_processing`` is 0.97, but ``stf_processing``/``fast_processing``
#: (0.83) are two workflows' sections that one testbed.toml may both hold.
NEAR_MISS_OVERLAY = 0.9

EMPTY_NAMESPACE = (
    "testbed.namespace: empty: set the namespace of this testbed instance "
    '(namespace = "..." under [testbed])'
)


def near_miss(
    name: str, known: tuple[str, ...] | list[str], cutoff: float = NEAR_MISS
) -> str | None:
    """The name in ``known`` that ``name`` is probably a typo of, or None."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return close[0] if close and close[0] != name else None


def split_config(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(wfe's tables, configuration tables)`` of merged definition data, in order.

    Raises ``InvalidDefinition`` for a near-miss of a wfe table and for a top-level
    value that is not a table.
    """
    own: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for key, value in data.items():
        if key in WFE_TABLES:
            own[key] = value
            continue
        lower = key.lower()
        close = lower if lower in WFE_TABLES else near_miss(key, WFE_TABLES)
        if close is not None:
            raise InvalidDefinition(f"{key}: unknown key (did you mean {close}?)")
        if not isinstance(value, dict):
            raise InvalidDefinition(
                f"{key}: unknown key (known: {', '.join(WFE_TABLES)}; "
                f"any other entry is a configuration table: [{key}])"
            )
        config[key] = value
    return own, config


def testbed_namespace(testbed: Any) -> str:
    """Check a ``[testbed]`` table and return its namespace. Raises ``InvalidDefinition``."""
    if not isinstance(testbed, dict):
        raise InvalidDefinition("testbed: expected a table")
    for key in testbed:
        if key not in TESTBED_KEYS:
            close = near_miss(key, TESTBED_KEYS)
            hint = f"did you mean {close}?" if close else f"known: {', '.join(TESTBED_KEYS)}"
            raise InvalidDefinition(f"testbed.{key}: unknown key ({hint})")
    namespace = testbed.get("namespace")
    if namespace is None:
        raise InvalidDefinition('testbed.namespace: required (namespace = "..." under [testbed])')
    if not isinstance(namespace, str):
        raise InvalidDefinition("testbed.namespace: expected a string")
    if not namespace.strip():
        raise InvalidDefinition(EMPTY_NAMESPACE)
    if "overlay" in testbed and not isinstance(testbed["overlay"], str):
        raise InvalidDefinition("testbed.overlay: expected a string (the overlay file)")
    unused = testbed.get("unused", [])
    if not isinstance(unused, list) or not all(isinstance(u, str) for u in unused):
        raise InvalidDefinition("testbed.unused: expected an array of table names")
    return namespace


def apply_overlay(expanded: Mapping[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """``expanded`` with the overlay file ``path`` (the seed's ``testbed.toml``) applied.

    The overlay has a ``[testbed]`` table with a non-empty ``namespace`` and, beside it,
    tables that override the configuration tables of the same name key by key. A table
    the definition does not have is not applied (one testbed.toml serves every workflow
    of the instance, as in the seed) and is named in ``testbed.unused``, unless its name
    is close to one the definition has: then it is refused as a typo. wfe's own tables
    cannot be overlaid. Errors (``InvalidDefinition``) name the overlay file.
    """
    shown = os.path.normpath(path)
    overlay = read_toml(Path(shown))
    try:
        return _apply(expanded, overlay, shown)
    except InvalidDefinition as exc:
        raise InvalidDefinition(f"{shown}: {exc}") from None


def _apply(expanded: Mapping[str, Any], overlay: dict[str, Any], shown: str) -> dict[str, Any]:
    testbed = overlay.pop("testbed", None)
    if testbed is None:
        raise InvalidDefinition('testbed: required: an overlay has [testbed] namespace = "..."')
    if not isinstance(testbed, dict):
        raise InvalidDefinition("testbed: expected a table")
    if set(testbed) - {"namespace"}:
        key = sorted(set(testbed) - {"namespace"})[0]
        raise InvalidDefinition(
            f"testbed.{key}: unknown key (an overlay's [testbed] has namespace)"
        )
    namespace = testbed_namespace(testbed)
    for key in overlay:
        if key in WFE_TABLES:
            raise InvalidDefinition(
                f"{key}: an overlay overrides configuration tables only "
                f"([{key}] comes from the definition)"
            )
    _, overlaid = split_config(overlay)
    _, config = split_config(expanded)
    applied: dict[str, Any] = {}
    unused: list[str] = []
    for key, value in overlaid.items():
        if key in config:
            applied[key] = value
            continue
        close = near_miss(key, list(config), NEAR_MISS_OVERLAY)
        if close is not None:
            raise InvalidDefinition(
                f"{key}: the definition has no such table (did you mean {close}?)"
            )
        unused.append(key)
    result = deep_merge(expanded, applied)
    record: dict[str, Any] = {"namespace": namespace, "overlay": str(Path(shown).resolve())}
    if unused:
        record["unused"] = unused
    result["testbed"] = record
    return result


def frozen(value: Any) -> Any:
    """A read-only copy of JSON-ready data: tables become read-only mappings, arrays tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(frozen(v) for v in value)
    return value


#: The ``ctx.config`` of actions not started by a request's stage.
NO_CONFIG: Mapping[str, Any] = MappingProxyType({})


def config_of(expanded: Mapping[str, Any]) -> Mapping[str, Any]:
    """The read-only configuration tables of a stored (already checked) expanded definition."""
    return MappingProxyType({k: frozen(v) for k, v in expanded.items() if k not in WFE_TABLES})
