"""validate_params: defaults filled in, and one-line errors for unknown, missing, mistyped."""

from __future__ import annotations

import math
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfe.rscripts import MISSING, ParamError, ParamType, parse_header, validate_params

HEADER = parse_header(
    """\
# wfe-rscript: 1
# name: checksum
# version: 1.0
# interpreter: sh
# param path: path (required) the file
# param algorithm: str = "sha256" one of sha256, md5
# param count: int = 1
# param ratio: float = 0.5
# param verbose: bool = false
# param tags: list = ["a"]
# param extra: dict = {"k": {"n": 1}}
# param note: str
# param limit: int = null none means no limit
""",
    source="checksum.sh",
)


def test_defaults_are_filled_in_declaration_order() -> None:
    """Only the required value is given: every default appears; the optional one without a
    default stays absent."""
    out = validate_params(HEADER, {"path": "/data/a"})
    assert out == {
        "path": "/data/a",
        "algorithm": "sha256",
        "count": 1,
        "ratio": 0.5,
        "verbose": False,
        "tags": ["a"],
        "extra": {"k": {"n": 1}},
        "limit": None,
    }
    assert list(out) == [p.name for p in HEADER.params if p.name != "note"]


def test_defaults_are_copies() -> None:
    """Changing a returned default does not change the header's default."""
    out = validate_params(HEADER, {"path": "p"})
    out["tags"].append("b")
    out["extra"]["k"]["n"] = 2
    assert validate_params(HEADER, {"path": "p"})["tags"] == ["a"]
    assert HEADER.param("extra").default == {"k": {"n": 1}}  # type: ignore[union-attr]


def test_given_values_win_and_floats_are_floats() -> None:
    """Given values replace defaults; an int given for a float parameter becomes a float."""
    out = validate_params(HEADER, {"path": "p", "ratio": 2, "note": "hi", "limit": 5})
    assert out["ratio"] == 2.0 and isinstance(out["ratio"], float)
    assert (out["note"], out["limit"]) == ("hi", 5)


def test_null_only_where_the_default_is_null() -> None:
    """null is accepted for a parameter whose default is null, and refused elsewhere."""
    assert validate_params(HEADER, {"path": "p", "limit": None})["limit"] is None
    with pytest.raises(ParamError, match="^checksum: parameter 'count' must be int, got null$"):
        validate_params(HEADER, {"path": "p", "count": None})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "checksum: parameter 'path' is required"),
        ({"path": "p", "count": "3"}, "checksum: parameter 'count' must be int, got str"),
        ({"path": "p", "count": True}, "checksum: parameter 'count' must be int, got bool"),
        ({"path": "p", "count": 1.0}, "checksum: parameter 'count' must be int, got float"),
        ({"path": "p", "ratio": "x"}, "checksum: parameter 'ratio' must be float, got str"),
        ({"path": "p", "ratio": math.inf}, "checksum: parameter 'ratio' must be a finite number"),
        ({"path": "p", "ratio": 10**400}, "checksum: parameter 'ratio' must be a finite number"),
        ({"path": "p", "verbose": 1}, "checksum: parameter 'verbose' must be bool, got int"),
        ({"path": "p", "tags": ("a",)}, "checksum: parameter 'tags' must be list, got tuple"),
        ({"path": "p", "tags": [{1, 2}]}, "checksum: parameter 'tags' must be plain JSON data"),
        ({"path": "p", "extra": []}, "checksum: parameter 'extra' must be dict, got list"),
        ({"path": ""}, "checksum: parameter 'path' must be a non-empty path"),
        ({"path": "a\0b"}, "checksum: parameter 'path' must be a non-empty path"),
        ({"path": 7}, "checksum: parameter 'path' must be path, got int"),
        (
            {"path": "p", "foo": 1},
            "checksum: unknown parameter 'foo' (known: algorithm, count, extra, limit, note, "
            "path, ratio, tags, verbose)",
        ),
    ],
)
def test_error_messages(params: dict[str, Any], message: str) -> None:
    """Each bad parameter set gets one line naming the script, the parameter and the rule."""
    with pytest.raises(ParamError) as info:
        validate_params(HEADER, params)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_params_must_be_an_object() -> None:
    """A list where the params object should be is refused."""
    with pytest.raises(ParamError, match="^checksum: params must be a JSON object, got list$"):
        validate_params(HEADER, [])  # type: ignore[arg-type]


@settings(suppress_health_check=[HealthCheck.too_slow])  # generation slows on a loaded CI host
@given(data=st.data())
def test_valid_values_pass_through(hdr: types.SimpleNamespace, data: st.DataObject) -> None:
    """For any header, values of the declared types come back unchanged (floats as floats),
    and leaving out an optional parameter gives its default."""
    header = data.draw(hdr.header)
    given_params: dict[str, Any] = {}
    for spec in header.params:
        if spec.required or data.draw(st.booleans()):
            given_params[spec.name] = data.draw(hdr.values[spec.type])
    out = validate_params(header, given_params)
    for spec in header.params:
        if spec.name in given_params:
            value = given_params[spec.name]
            assert out[spec.name] == (float(value) if spec.type is ParamType.FLOAT else value)
        elif spec.default is MISSING:
            assert spec.name not in out
        else:
            assert out[spec.name] == spec.default
