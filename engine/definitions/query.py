"""The declarative input query: filter rules on metadata fields.

A definition's ``[query]`` table selects the catalog entries that become the first stage's
inputs. It is a list of rules, all of which must hold (AND)::

    [[query.where]]
    field = "kind"
    op = "eq"
    value = "raw"

    [[query.where]]
    field = "run"
    op = "gte"
    value = 100

Ops: ``eq``, ``neq``, ``in`` (value is a non-empty array), ``gt``, ``gte``, ``lt``,
``lte`` (value is a number or a string), ``glob`` (value is a string pattern, ``fnmatch``
syntax, case-sensitive). A query without rules matches everything.

Type semantics (``Rule.matches`` never raises):

* A field that is missing never matches, whatever the op (``neq`` included).
* Values are compared only within one kind: numbers (int and float, not bool), strings,
  booleans. Comparing different kinds never matches (``neq`` included): ``run = "100"``
  does not match ``gte 100``, and ``true`` is not ``1``.
* Booleans support ``eq``, ``neq`` and ``in`` only; strings order by code point, so ISO
  8601 dates (``"2024-05-01"``) compare as dates do. TOML dates in a definition reach the
  query as ISO strings (the loader converts them).
* Null, arrays and tables in metadata never match.
* ``field`` is looked up as a key first; if absent and it contains dots, as a path into
  nested tables (``"obs.source"`` finds ``{"obs": {"source": ...}}``).
"""

from __future__ import annotations

import enum
import fnmatch
import math
from collections.abc import Mapping
from typing import Any

import attrs

from wfe.engine.definitions.errors import QueryError


class Op(enum.Enum):
    """A comparison a rule applies to a metadata field."""

    EQ = "eq"
    NEQ = "neq"
    IN = "in"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    GLOB = "glob"


_ORDERING = {
    Op.GT: lambda a, b: a > b,
    Op.GTE: lambda a, b: a >= b,
    Op.LT: lambda a, b: a < b,
    Op.LTE: lambda a, b: a <= b,
}
_OP_NAMES = ", ".join(op.value for op in Op)


def _kind(value: Any) -> str | None:
    """The comparison kind of a value: 'bool', 'number', 'str', or None (never matches)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    return None


def _lookup(metadata: Mapping[str, Any], field: str) -> tuple[bool, Any]:
    if field in metadata:
        return True, metadata[field]
    if "." not in field:
        return False, None
    node: Any = metadata
    for part in field.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


@attrs.frozen(kw_only=True)
class Rule:
    """One condition: ``field op value``."""

    field: str
    op: Op
    value: Any  # str | int | float | bool; a tuple of those for Op.IN

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """True when ``metadata`` satisfies this rule; see the module doc for types."""
        found, actual = _lookup(metadata, self.field)
        if not found:
            return False
        kind = _kind(actual)
        if kind is None:
            return False
        if self.op is Op.IN:
            return any(_kind(v) == kind and actual == v for v in self.value)
        if _kind(self.value) != kind:
            return False
        if self.op is Op.EQ:
            return bool(actual == self.value)
        if self.op is Op.NEQ:
            return bool(actual != self.value)
        if self.op is Op.GLOB:
            return fnmatch.fnmatchcase(actual, self.value)
        if kind == "bool":
            return False
        return bool(_ORDERING[self.op](actual, self.value))

    def to_data(self) -> dict[str, Any]:
        """The TOML/JSON form of this rule."""
        value = list(self.value) if self.op is Op.IN else self.value
        return {"field": self.field, "op": self.op.value, "value": value}


@attrs.frozen(kw_only=True)
class Query:
    """A conjunction of rules; ``matches`` is pure and never raises."""

    rules: tuple[Rule, ...] = ()

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """True when every rule holds for ``metadata`` (always true without rules)."""
        return all(rule.matches(metadata) for rule in self.rules)

    def to_data(self) -> dict[str, Any]:
        """The TOML/JSON form: ``{"where": [...]}``; ``compile_query`` reads it back."""
        return {"where": [rule.to_data() for rule in self.rules]}


def compile_query(data: Any, *, path: str = "query") -> Query:
    """Build a ``Query`` from its TOML form (``{"where": [{field, op, value}, ...]}``).

    Raises ``QueryError`` with a one-line message naming the path of the first problem,
    e.g. ``query.where[2].op: unknown op 'like' (expected one of eq, neq, ...)``.
    """
    if not isinstance(data, Mapping):
        raise QueryError(f"{path}: expected a table")
    extra = sorted(set(data) - {"where"})
    if extra:
        raise QueryError(f"{path}.{extra[0]}: unknown key (a query has only `where` rules)")
    where = data.get("where", [])
    if not isinstance(where, list):
        raise QueryError(f"{path}.where: expected an array of tables ([[{path}.where]])")
    return Query(rules=tuple(_compile_rule(r, f"{path}.where[{i}]") for i, r in enumerate(where)))


def _compile_rule(data: Any, path: str) -> Rule:
    if not isinstance(data, Mapping):
        raise QueryError(f"{path}: expected a table with field, op and value")
    for key in sorted(data):
        if key not in ("field", "op", "value"):
            raise QueryError(f"{path}.{key}: unknown key (a rule has field, op and value)")
    for key in ("field", "op", "value"):
        if key not in data:
            raise QueryError(f"{path}.{key}: required")
    field, op_name, value = data["field"], data["op"], data["value"]
    if not isinstance(field, str) or not field:
        raise QueryError(f"{path}.field: expected a non-empty string")
    try:
        op = Op(op_name)
    except ValueError:
        raise QueryError(
            f"{path}.op: unknown op {op_name!r} (expected one of {_OP_NAMES})"
        ) from None
    if op is Op.IN:
        if not isinstance(value, list | tuple) or not value:
            raise QueryError(f"{path}.value: `in` expects a non-empty array")
        for i, item in enumerate(value):
            _check_scalar(item, f"{path}.value[{i}]")
        return Rule(field=field, op=op, value=tuple(value))
    _check_scalar(value, f"{path}.value")
    if op is Op.GLOB and not isinstance(value, str):
        raise QueryError(f"{path}.value: `glob` expects a string pattern")
    if op in _ORDERING and isinstance(value, bool):
        raise QueryError(f"{path}.value: `{op.value}` expects a number or a string")
    return Rule(field=field, op=op, value=value)


def _check_scalar(value: Any, path: str) -> None:
    if _kind(value) is None:
        raise QueryError(f"{path}: expected a string, a number or a boolean")
    if isinstance(value, float) and not math.isfinite(value):
        raise QueryError(f"{path}: expected a finite number")
