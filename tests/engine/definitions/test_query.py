"""The input query: every op, the type rules, and bad rules refused with their path."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.definitions import Op, Query, QueryError, compile_query


def rule(field: str, op: str, value: Any) -> Query:
    return compile_query({"where": [{"field": field, "op": op, "value": value}]})


META = {
    "run": 120,
    "gain": 1.5,
    "det": "A",
    "name": "raw_r0120.csv",
    "ok": True,
    "obs": {"src": "M31"},
}


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("run", "eq", 120, True),
        ("run", "eq", 120.0, True),
        ("run", "eq", 121, False),
        ("run", "neq", 121, True),
        ("run", "neq", 120, False),
        ("det", "in", ["A", "B"], True),
        ("det", "in", ["C"], False),
        ("run", "in", [1, 120], True),
        ("run", "gt", 119, True),
        ("run", "gt", 120, False),
        ("run", "gte", 120, True),
        ("run", "lt", 120, False),
        ("run", "lte", 120, True),
        ("gain", "lt", 2, True),
        ("det", "lt", "B", True),
        ("name", "glob", "raw_r01*.csv", True),
        ("name", "glob", "RAW*", False),  # case-sensitive
        ("name", "glob", "raw_r012?.csv", True),
        ("ok", "eq", True, True),
        ("ok", "neq", False, True),
        ("ok", "in", [True], True),
        ("obs.src", "eq", "M31", True),  # dotted path into a nested table
        # mismatched kinds never match, for any op
        ("run", "eq", "120", False),
        ("run", "neq", "120", False),
        ("run", "gte", "100", False),
        ("det", "gt", 1, False),
        ("ok", "eq", 1, False),
        ("run", "eq", True, False),
        ("run", "in", ["120", True], False),
        ("run", "glob", "1*", False),
        ("ok", "gt", 0, False),
        ("obs", "eq", "x", False),  # a table never matches
        # a missing field never matches
        ("missing", "eq", 1, False),
        ("missing", "neq", 1, False),
        ("obs.nope", "neq", "x", False),
        ("run.x", "eq", 1, False),
    ],
)
def test_ops(field: str, op: str, value: Any, expected: bool) -> None:
    """Each op compares within one kind; other kinds and missing fields never match."""
    assert rule(field, op, value).matches(META) is expected


def test_rules_are_anded_and_no_rules_match_everything() -> None:
    """Every rule must hold; an empty query selects everything."""
    query = compile_query(
        {
            "where": [
                {"field": "run", "op": "gte", "value": 100},
                {"field": "det", "op": "eq", "value": "B"},
            ]
        }
    )
    assert not query.matches(META)
    assert query.matches({**META, "det": "B"})
    assert compile_query({}).matches({}) and compile_query({"where": []}).matches(META)


def test_a_literal_dotted_key_wins_over_the_nested_path() -> None:
    """A key containing a dot is looked up as written first."""
    assert rule("a.b", "eq", 1).matches({"a.b": 1, "a": {"b": 2}})
    assert rule("a.b", "eq", 2).matches({"a": {"b": 2}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "query: expected a table"),
        ({"limit": 3}, "query.limit: unknown key (a query has only `where` rules)"),
        ({"where": {"field": "a"}}, "query.where: expected an array of tables ([[query.where]])"),
        ({"where": [3]}, "query.where[0]: expected a table with field, op and value"),
        ({"where": [{"op": "eq", "value": 1}]}, "query.where[0].field: required"),
        ({"where": [{"field": "a", "value": 1}]}, "query.where[0].op: required"),
        ({"where": [{"field": "a", "op": "eq"}]}, "query.where[0].value: required"),
        (
            {"where": [{"field": "", "op": "eq", "value": 1}]},
            "query.where[0].field: expected a non-empty string",
        ),
        (
            {
                "where": [
                    {"field": "a", "op": "eq", "value": 1},
                    {"field": "a", "op": "like", "value": 1},
                ]
            },
            "query.where[1].op: unknown op 'like' (expected one of eq, neq, in, gt, gte, lt, lte, glob)",
        ),
        (
            {"where": [{"field": "a", "op": "eq", "value": 1, "x": 2}]},
            "query.where[0].x: unknown key (a rule has field, op and value)",
        ),
        (
            {"where": [{"field": "a", "op": "in", "value": 1}]},
            "query.where[0].value: `in` expects a non-empty array",
        ),
        (
            {"where": [{"field": "a", "op": "in", "value": []}]},
            "query.where[0].value: `in` expects a non-empty array",
        ),
        (
            {"where": [{"field": "a", "op": "in", "value": [1, [2]]}]},
            "query.where[0].value[1]: expected a string, a number or a boolean",
        ),
        (
            {"where": [{"field": "a", "op": "glob", "value": 1}]},
            "query.where[0].value: `glob` expects a string pattern",
        ),
        (
            {"where": [{"field": "a", "op": "gt", "value": True}]},
            "query.where[0].value: `gt` expects a number or a string",
        ),
        (
            {"where": [{"field": "a", "op": "eq", "value": {"x": 1}}]},
            "query.where[0].value: expected a string, a number or a boolean",
        ),
        (
            {"where": [{"field": "a", "op": "eq", "value": float("inf")}]},
            "query.where[0].value: expected a finite number",
        ),
    ],
)
def test_bad_rules_are_refused_with_their_path(data: Any, message: str) -> None:
    """Each problem is one line naming the rule's path."""
    with pytest.raises(QueryError) as info:
        compile_query(data)
    assert str(info.value) == message


scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
)
metadata_values = (
    scalars
    | st.lists(scalars, max_size=2)
    | st.dictionaries(st.text(max_size=2), scalars, max_size=2)
)
rule_values = (
    st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)


def kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "str" if isinstance(value, str) else None


@given(
    st.sampled_from([op.value for op in Op if op not in (Op.IN, Op.GLOB)]),
    rule_values,
    metadata_values,
)
def test_matches_never_raises_and_follows_python_within_a_kind(
    op: str, value: Any, actual: Any
) -> None:
    """For comparable kinds the result is Python's comparison; otherwise it is False."""
    if op in ("gt", "gte", "lt", "lte") and isinstance(value, bool):
        return  # refused at compile time, tested above
    query = rule("f", op, value)
    result = query.matches({"f": actual})
    same = kind(actual) is not None and kind(actual) == kind(value)
    if not same or (kind(value) == "bool" and op not in ("eq", "neq")):
        assert result is False
        return
    python = {
        "eq": lambda: actual == value,
        "neq": lambda: actual != value,
        "gt": lambda: actual > value,
        "gte": lambda: actual >= value,
        "lt": lambda: actual < value,
        "lte": lambda: actual <= value,
    }[op]()
    assert result is python
    assert query.matches({}) is False  # missing never matches


@given(st.lists(rule_values, min_size=1, max_size=4), metadata_values)
def test_in_is_eq_to_any_element(values: list[Any], actual: Any) -> None:
    """``in [a, b]`` matches exactly when ``eq a`` or ``eq b`` does."""
    assert rule("f", "in", values).matches({"f": actual}) == any(
        rule("f", "eq", v).matches({"f": actual}) for v in values
    )


@given(st.text(alphabet="ab*?[]!", max_size=6), st.text(alphabet="ab", max_size=6))
def test_glob_is_fnmatchcase(pattern: str, name: str) -> None:
    """``glob`` follows ``fnmatch.fnmatchcase`` on strings."""
    assert rule("f", "glob", pattern).matches({"f": name}) == fnmatch.fnmatchcase(name, pattern)


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=5),
            st.sampled_from([op.value for op in Op]),
            st.text(max_size=4) | st.integers(),
        ),
        max_size=4,
    )
)
def test_to_data_round_trips(rules: list[tuple[str, str, Any]]) -> None:
    """A compiled query's data form compiles back to the same query."""
    where = []
    for field, op, value in rules:
        if op == "in":
            value = [value]
        elif op == "glob":
            value = str(value)
        where.append({"field": field, "op": op, "value": value})
    query = compile_query({"where": where})
    assert compile_query(query.to_data()) == query
