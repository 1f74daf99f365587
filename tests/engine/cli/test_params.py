"""``wfe run -p``: values converted to the declared parameter types, errors in one line."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from wfe.engine.cli.params import ParamValueError, convert, guess, typed_params
from wfe.engine.cli.watch import parse_since
from wfe.engine.errors import EngineError

SLEEP_ECHO = [
    {"name": "message", "type": "str"},
    {"name": "seconds", "type": "float"},
    {"name": "lines", "type": "int"},
    {"name": "loud", "type": "bool"},
    {"name": "where", "type": "path"},
    {"name": "tags", "type": "list"},
    {"name": "meta", "type": "dict"},
]


def test_a_str_parameter_keeps_digits_as_text() -> None:
    """``-p message=42`` is the string "42" for a str parameter (the reported bug), and the
    other declared types are converted from text."""
    params = typed_params(
        [
            "message=42",
            "seconds=1.5",
            "lines=3",
            "loud=yes",
            "where=/data/x",
            "tags=[1, 2]",
            'meta={"a": 1}',
        ],
        SLEEP_ECHO,
        target="sleep_echo",
    )
    assert params == {
        "message": "42",
        "seconds": 1.5,
        "lines": 3,
        "loud": True,
        "where": "/data/x",
        "tags": [1, 2],
        "meta": {"a": 1},
    }


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("lines=abc", "parameter 'lines': 'abc' is not an integer"),
        ("lines=1.5", "parameter 'lines': '1.5' is not an integer"),
        ("seconds=NaN", "parameter 'seconds': 'NaN' is not a finite number"),
        ("seconds=inf", "parameter 'seconds': 'inf' is not a finite number"),
        ("loud=maybe", "parameter 'loud': 'maybe' is not true or false"),
        ("tags={}", "parameter 'tags': '{}' is not a JSON array"),
        ("meta=[NaN]", "parameter 'meta': '[NaN]' is not a JSON object"),
        ("nope=1", "sleep_echo: unknown parameter 'nope' (known: lines, loud, message, meta, seconds, tags, where)"),
        ("novalue", "bad --param 'novalue': expected NAME=VALUE"),
        ("=1", "bad --param '=1': expected NAME=VALUE"),
    ],
)  # fmt: skip
def test_a_value_that_does_not_convert_is_one_line(pair: str, message: str) -> None:
    """A bad value, an undeclared name or a malformed pair is refused with one line."""
    with pytest.raises(ParamValueError) as caught:
        typed_params([pair], SLEEP_ECHO, target="sleep_echo")
    assert str(caught.value) == message


def test_without_a_declaration_values_are_guessed() -> None:
    """An action that declares no parameters gets JSON when a value parses, else text;
    NaN is not JSON and stays text."""
    assert typed_params(["n=3", "s=hello", "l=[1]", "x=NaN", "y=[1e999]"], [], target="a.b") == {
        "n": 3,
        "s": "hello",
        "l": [1],
        "x": "NaN",
        "y": "[1e999]",
    }


@given(st.integers())
def test_int_round_trips(value: int) -> None:
    """Any integer written in decimal converts back to itself."""
    assert convert("n", str(value), "int") == value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_float_round_trips(value: float) -> None:
    """Any finite float written with repr converts back to itself."""
    assert convert("x", repr(value), "float") == value


@given(st.text())
def test_str_and_path_are_taken_verbatim(value: str) -> None:
    """A str or path value is the text as given, whatever it looks like."""
    assert convert("s", value, "str") == value
    assert convert("p", value, "path") == value


@given(st.text())
@example("1e999")
@example('{"a": [-1e400]}')
def test_guess_never_yields_a_non_finite_number(value: str) -> None:
    """A guessed value is never NaN or infinite, even nested (such text stays text)."""
    guessed = guess(value)
    json.dumps(guessed, allow_nan=False)  # raises on a non-finite number anywhere
    if not isinstance(guessed, str):
        assert json.loads(value) == guessed


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400), ("w", 604800)]),
)
def test_since_an_age_counts_back_from_now(amount: int, unit: tuple[str, int]) -> None:
    """``--since 30m`` is thirty minutes before now, for every unit."""
    now = 2_000_000_000.0
    assert parse_since(f"{amount}{unit[0]}", now=now) == now - amount * unit[1]


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2999, 1, 1), timezones=st.just(UTC)
    )
)
def test_since_an_iso_time_with_a_zone_is_that_instant(when: datetime) -> None:
    """An ISO 8601 time with its zone means that instant, whatever the local zone."""
    assert parse_since(when.isoformat()) == when.timestamp()


@pytest.mark.parametrize("text", ["soon", "5 parsecs", "-3h", "2026-13-01", ""])
def test_since_refuses_what_is_neither(text: str) -> None:
    """Anything else is one line naming the value and both forms."""
    with pytest.raises(
        EngineError, match=r"^--since .*: expected an ISO date or time .* or an age"
    ):
        parse_since(text)
