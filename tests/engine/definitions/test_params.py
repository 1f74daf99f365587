"""Request parameters: defaults, conversion of CLI strings, errors, and what each
stage's RScript receives."""

from __future__ import annotations

from typing import Any

import pytest

from wfe.engine.definitions import (
    Definition,
    ParamError,
    build_definition,
    parse_assignments,
    resolve_params,
    stage_params,
)


def make(params: dict[str, Any], stage_params_: dict[str, Any] | None = None) -> Definition:
    return build_definition(
        {
            "workflow": {"name": "demo", "namespace": "t"},
            "params": params,
            "stages": [{"name": "s", "rscript": "x", "params": stage_params_ or {}}],
        }
    )


SPECS = {
    "n": {"type": "int", "default": 3},
    "x": {"type": "float", "default": 1.5},
    "flag": {"type": "bool", "default": False},
    "label": {"type": "str", "default": "a"},
    "need": {"type": "str", "description": "no default: required"},
}


def test_defaults_fill_in_and_given_values_win() -> None:
    """Omitted parameters take their default; given ones replace it."""
    d = make(SPECS)
    assert resolve_params(d, {"need": "z"}) == {
        "n": 3,
        "x": 1.5,
        "flag": False,
        "label": "a",
        "need": "z",
    }
    assert resolve_params(d, {"need": "z", "n": 7, "x": 2})["x"] == 2.0


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("n", "42", 42),
        ("n", " -1 ", -1),
        ("x", "2.5", 2.5),
        ("x", "3", 3.0),
        ("flag", "yes", True),
        ("flag", "FALSE", False),
        ("flag", "1", True),
        ("label", " keep spaces ", " keep spaces "),
    ],
)
def test_strings_from_the_command_line_are_converted(name: str, text: str, value: Any) -> None:
    """``--param k=v`` text becomes the declared type."""
    result = resolve_params(make(SPECS), {"need": "z", name: text})
    assert result[name] == value and type(result[name]) is type(value)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "parameter 'need' is required (no default): give need=..."),
        ({"need": "z", "nope": 1}, "unknown parameter 'nope' (known: flag, label, n, need, x)"),
        ({"need": "z", "n": "3.5"}, "parameter 'n': '3.5' is not an integer"),
        ({"need": "z", "n": 3.0}, "parameter 'n': 3.0 is not an integer"),
        ({"need": "z", "n": True}, "parameter 'n': True is not an integer"),
        ({"need": "z", "x": "nan"}, "parameter 'x': 'nan' is not a number"),
        ({"need": "z", "flag": "maybe"}, "parameter 'flag': 'maybe' is not true or false"),
        ({"need": "z", "flag": 1}, "parameter 'flag': 1 is not true or false"),
        ({"need": 5}, "parameter 'need': 5 is not a string"),
    ],
)
def test_bad_parameters_are_refused(given: dict[str, Any], message: str) -> None:
    """Unknown, unconvertible and missing parameters are refused with one line."""
    with pytest.raises(ParamError) as info:
        resolve_params(make(SPECS), given)
    assert str(info.value) == message


def test_stage_params_substitute_references_keeping_types() -> None:
    """``"${name}"`` anywhere in a stage's params becomes the request's value; other
    strings are left as written."""
    d = make(
        SPECS,
        {"count": "${n}", "nested": {"list": ["${flag}", "lit ${n}"]}, "plain": "${n"},
    )
    request = resolve_params(d, {"need": "z", "n": "9"})
    assert stage_params(d, "s", request) == {
        "count": 9,
        "nested": {"list": [False, "lit ${n}"]},
        "plain": "${n",
    }
    with pytest.raises(ParamError, match="stage 's': parameter 'n' has no value"):
        stage_params(d, "s", {})
    with pytest.raises(KeyError):
        stage_params(d, "nope", request)


def test_parse_assignments() -> None:
    """``k=v`` items split at the first ``=``; a later item wins; a bad one is refused."""
    assert parse_assignments(["a=1", "b=x=y", "a=2", "c="]) == {"a": "2", "b": "x=y", "c": ""}
    for bad in ("novalue", "=3", " =3"):
        with pytest.raises(ParamError, match="expected NAME=VALUE"):
            parse_assignments([bad])
