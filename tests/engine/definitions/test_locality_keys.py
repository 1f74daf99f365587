"""A stage's ``max_distance`` and a workflow's ``type``: kept as written, refused in one line
when out of range, of the wrong type, or on a stage that reads no replicas."""

from __future__ import annotations

from typing import Any

import pytest

from wfe.engine.definitions import load_definition

from .conftest import refused

HEAD = '[workflow]\nname = "demo"\nnamespace = "t"\n'
QUERY = '[[query.where]]\nfield = "kind"\nop = "eq"\nvalue = "raw"\n'
STAGE = '[[stages]]\nname = "s"\nrscript = "x"\nconsumes = "query"\n'


def test_max_distance_and_type_are_kept(write: Any) -> None:
    """A stage's max_distance and the workflow's type load as written; unset, both are None."""
    text = HEAD + 'type = "analysis"\n' + QUERY + STAGE + "max_distance = 30\n"
    definition = load_definition(write("main.toml", text))
    assert definition.workflow.type == "analysis"
    assert definition.stage("s").max_distance == 30
    plain = load_definition(write("plain.toml", HEAD + QUERY + STAGE))
    assert (plain.workflow.type, plain.stage("s").max_distance) == (None, None)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "max_distance = 101",
            "stages[0].max_distance: a distance is 0 (local) to 100 (far), not 101",
        ),
        (
            "max_distance = -1",
            "stages[0].max_distance: a distance is 0 (local) to 100 (far), not -1",
        ),
        ('max_distance = "near"', "stages[0].max_distance: expected an integer"),
        ("max_distance = 2.5", "stages[0].max_distance: expected an integer"),
    ],
)
def test_a_bad_max_distance_is_refused(write: Any, line: str, expected: str) -> None:
    """Out of 0-100 or not an integer: one line naming the key."""
    assert refused(write, HEAD + QUERY + STAGE + line + "\n") == expected


def test_max_distance_on_a_stage_without_inputs_is_refused(write: Any) -> None:
    """A stage that consumes nothing reads no replicas: its max_distance is refused."""
    text = HEAD + '[[stages]]\nname = "s"\nrscript = "x"\nmax_distance = 10\n'
    assert refused(write, text) == (
        "stages[0].max_distance: stage 's' runs no RScript on inputs, so it reads no replicas"
        " (give it consumes and an rscript)"
    )


def test_a_bad_type_is_refused(write: Any) -> None:
    """A type is a non-empty name without surrounding spaces."""
    assert refused(write, HEAD + 'type = " sim"\n' + QUERY + STAGE) == (
        "workflow.type: expected a non-empty request type name without surrounding spaces"
    )
    assert refused(write, HEAD + "type = 3\n" + QUERY + STAGE) == "workflow.type: expected a string"
