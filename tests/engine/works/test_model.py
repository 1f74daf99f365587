"""The ``Work`` model: the seed's payload, and one-line errors naming each bad field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.works.model import (
    FIELDS,
    Work,
    WorkError,
    WorkStatus,
    parse_work,
    payload,
)

SEED_PAYLOAD = {
    "pipeline": "sample-pipeline",
    "parameters": None,
    "results": None,
    "path": ".",
    "event": None,
    "tags": None,
    "group": None,
    "timeout": 3600,
    "retries": 2,
    "priority": 3,
    "products": None,
    "plots": None,
    "site": "local",
    "user": None,
    "archive": True,
    "precursors": None,
    "config": None,
    "id": None,
    "start": None,
    "stop": None,
    "attempt": 1,
    "status": "created",
}


def test_the_payload_has_the_seeds_fields_and_defaults() -> None:
    """A work made from a pipeline alone has exactly the seed's fields and defaults, a
    creation time, and neither function nor command."""
    made = payload(Work(pipeline="sample-pipeline"))
    creation = made.pop("creation")
    assert isinstance(creation, float)
    assert made == {**SEED_PAYLOAD, "function": None, "command": None}
    assert list(FIELDS[: len(SEED_PAYLOAD) + 1]) == [
        *list(SEED_PAYLOAD)[:18],
        "creation",
        *list(SEED_PAYLOAD)[18:],
    ]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
names = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)

valid_payloads = st.fixed_dictionaries(
    {"pipeline": names},
    optional={
        "parameters": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        "results": json_values,
        "path": st.text(max_size=10),
        "event": st.lists(st.integers(), max_size=3),
        "tags": st.lists(names, max_size=3),
        "group": st.lists(names, max_size=2),
        "timeout": st.integers(1, 604800),
        "retries": st.integers(0, 100),
        "priority": st.integers(1, 5),
        "products": st.lists(st.text(max_size=10), max_size=2),
        "plots": st.lists(st.text(max_size=10), max_size=2),
        "site": names,
        "user": names | st.none(),
        "archive": st.booleans(),
        "precursors": st.lists(st.dictionaries(names, names, max_size=2), max_size=2),
        "config": st.dictionaries(names, json_values, max_size=2),
        "id": names | st.none(),
        "creation": st.floats(0, 2e9),
        "attempt": st.integers(1, 10),
        "status": st.sampled_from([s.value for s in WorkStatus]),
        "function": st.sampled_from(["mymodule.add", "a.b.c"]),
    },
)


@given(valid_payloads)
def test_a_valid_payload_round_trips_through_json(data: dict[str, Any]) -> None:
    """Any valid payload parses, and its stored form, through JSON and back, is the same work."""
    work = parse_work(data)
    stored = json.loads(json.dumps(payload(work)))
    assert parse_work(stored) == work
    for key, value in data.items():
        assert stored[key] == value


BAD: list[tuple[str, Any, str]] = [
    ("priority", 9, "priority: must be 1..5, got 9"),
    ("priority", 0, "priority: must be 1..5, got 0"),
    ("priority", "3", "priority: expected an integer, got '3'"),
    ("timeout", 0, "timeout: must be 1..604800 s, got 0"),
    ("retries", -1, "retries: must be 0..100, got -1"),
    ("parameters", {"x": {1, 2}}, "parameters: must be JSON (an object of JSON values)"),
    ("parameters", {"x": float("nan")}, "parameters: must be JSON (an object of JSON values)"),
    ("parameters", [1], "parameters: expected"),
    ("tags", ["ok", 3], "tags[1]: expected a string, got 3"),
    ("archive", 1, "archive: expected true or false, got 1"),
    ("status", "done", "status: must be one of created, queued, running, success"),
    ("attempt", 0, "attempt: must be at least 1, got 0"),
    ("function", "add", "function: must be module.function, got 'add'"),
    ("nonsense", 1, "nonsense: unknown field (known: pipeline, parameters"),
    ("pipeline", "", "pipeline: must be 1-128 letters"),
    ("pipeline", 7, "pipeline: expected a string, got 7"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD)
def test_each_bad_field_gets_one_line_naming_it(field: str, value: Any, message: str) -> None:
    """A bad value of one field is refused with one line that starts with the field's path."""
    with pytest.raises(WorkError) as caught:
        parse_work({"pipeline": "p", field: value})
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_function_and_command_together_are_refused() -> None:
    """A work names what a worker runs once: a function or a command, never both."""
    with pytest.raises(WorkError, match=r"^function, command: give one of them, not both$"):
        parse_work({"pipeline": "p", "function": "m.f", "command": "true"})
    with pytest.raises(WorkError, match=r"^pipeline: is required$"):
        parse_work({"parameters": {}})
    with pytest.raises(WorkError, match=r"^work: expected an object of fields"):
        parse_work(["pipeline"])


@given(
    valid_payloads,
    st.sampled_from([(f, v) for f, v, _ in BAD if f != "pipeline"]),
)
def test_any_bad_field_spoils_an_otherwise_valid_work(
    data: dict[str, Any], bad: tuple[str, Any]
) -> None:
    """Whatever else a payload holds, one bad field makes it refused, and the line names it."""
    data = {k: v for k, v in data.items() if k not in ("function", "command")}
    field, value = bad
    with pytest.raises(WorkError) as caught:
        parse_work({**data, field: value})
    assert str(caught.value).split(":")[0].split("[")[0] == field
