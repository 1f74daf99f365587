"""The TOML writer: what it writes reads back as the same data."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.definitions import build_definition, dump_toml, load_definition

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "pipeline" / "pipeline.toml"

keys = st.text(max_size=6)
scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


@given(st.dictionaries(keys, values, max_size=5))
def test_dump_round_trips_through_tomllib(data: dict[str, Any]) -> None:
    """``tomllib.loads(dump_toml(data)) == data`` for any TOML-representable data."""
    assert tomllib.loads(dump_toml(data)) == data


def test_the_example_dumps_to_an_equivalent_definition() -> None:
    """The expanded example written as TOML builds the same definition."""
    definition = load_definition(EXAMPLE)
    text = dump_toml(definition.expanded)
    again = build_definition(tomllib.loads(text), sources=definition.sources, git=definition.git)
    assert again == definition
    assert "[[stages]]" in text and "includes" not in text


def test_values_toml_cannot_hold_are_refused() -> None:
    """None and non-finite floats raise ValueError."""
    for bad in (None, float("nan")):
        with pytest.raises(ValueError, match="TOML output cannot hold"):
            dump_toml({"a": bad})
