"""``on_retry = { max_inputs = "/N" }``: parsed and checked with the definition (one-line
refusals), and the arithmetic of how many inputs a retry keeps."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.definitions import load_definition
from wfe.engine.definitions.on_retry import BadRule, apply_rules, inputs_kept, parse_change

from .conftest import refused

HEAD = '[workflow]\nname = "demo"\nnamespace = "t"\n[query]\n'
STAGE = '[[stages]]\nname = "s"\nrscript = "x"\nconsumes = "query"\nmax_inputs = 8\nretries = 3\n'


def test_a_split_rule_loads_with_or_without_memory(write: Any) -> None:
    """max_inputs = "/2" loads on a stage that consumes inputs, alone or beside memory, and
    stays as written."""
    stage = load_definition(write("a.toml", HEAD + STAGE + 'on_retry = { max_inputs = "/2" }\n'))
    assert dict(stage.stage("s").on_retry) == {"max_inputs": "/2"}
    both = (
        HEAD
        + STAGE
        + 'requires = { memory = "1G" }\non_retry = { memory = "x2", max_inputs = "/ 3" }\n'
    )
    assert dict(load_definition(write("b.toml", both)).stage("s").on_retry) == {
        "memory": "x2",
        "max_inputs": "/ 3",
    }


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            '"/0"',
            "stages[0].on_retry: max_inputs: '/0' must divide by a whole number of at least 2",
        ),
        (
            '"/1"',
            "stages[0].on_retry: max_inputs: '/1' must divide by a whole number of at least 2",
        ),
        ('"/x"', """stages[0].on_retry: max_inputs: expected "/<divisor>" (e.g. "/2"), not '/x'"""),
        ('"x2"', """stages[0].on_retry: max_inputs: expected "/<divisor>" (e.g. "/2"), not 'x2'"""),
        (
            '"/2.5"',
            """stages[0].on_retry: max_inputs: expected "/<divisor>" (e.g. "/2"), not '/2.5'""",
        ),
        ("2", 'stages[0].on_retry: max_inputs: expected a string like "/2", not 2'),
    ],
)
def test_bad_split_rules_are_refused_with_one_line(write: Any, rule: str, expected: str) -> None:
    """A divisor that is zero, one, not a whole number, a multiplication or not a string is
    refused with one line naming the rule."""
    assert refused(write, HEAD + STAGE + f"on_retry = {{ max_inputs = {rule} }}\n") == expected


def test_a_split_rule_needs_inputs_and_no_group_by(write: Any) -> None:
    """A stage with no inputs (no consumes, or an action) has nothing to split; a stage with
    group_by runs one job per sub-group, which a split would break: both refused."""
    no_inputs = (
        '[workflow]\nname = "demo"\nnamespace = "t"\n[[stages]]\nname = "s"\nrscript = "x"\n'
        'retries = 1\non_retry = { max_inputs = "/2" }\n'
    )
    assert refused(write, no_inputs) == (
        "stages[0].on_retry.max_inputs: stage 's' runs no RScript on inputs, so there are no "
        "inputs to split (give it consumes and an rscript)"
    )
    grouped = (
        HEAD + '[[stages]]\nname = "s"\nrscript = "x"\nconsumes = "query"\nretries = 1\n'
        'group_by = ["run"]\non_retry = { max_inputs = "/2" }\n'
    )
    assert refused(write, grouped) == (
        "stages[0].on_retry.max_inputs: stage 's' runs one job per sub-group (group_by), "
        "which a split would cut in two: choose one"
    )


def test_a_memory_rule_cannot_divide() -> None:
    """ "/2" is a max_inputs rule: for memory it is refused, as before."""
    with pytest.raises(BadRule, match='memory: expected "x<factor>"'):
        parse_change("memory", "/2")


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=2, max_value=50))
def test_a_retry_keeps_ceil_n_over_divisor(inputs: int, divisor: int) -> None:
    """A job of n > 1 inputs keeps ceil(n / N) of them, at least one and fewer than n; a job
    of 0 or 1 input is not split; memory and other requirements are untouched by the rule."""
    kept = inputs_kept({"max_inputs": f"/{divisor}"}, inputs)
    if inputs < 2:
        assert kept is None
    else:
        assert kept == math.ceil(inputs / divisor)
        assert kept is not None and 1 <= kept < inputs
    assert inputs_kept({"memory": "x2"}, inputs) is None
    req = {"memory": 1 << 20, "cpus": 1}
    assert apply_rules({"max_inputs": f"/{divisor}", "memory": "x2"}, req) == {
        "memory": 2 << 20,
        "cpus": 1,
    }


@given(st.text(max_size=8))
def test_any_text_is_a_divisor_or_a_one_line_error(text: str) -> None:
    """Every value either parses to a divisor of at least 2 or is refused with one line."""
    try:
        how, amount = parse_change("max_inputs", text)
    except BadRule as exc:
        assert "\n" not in str(exc).replace(repr(text), "")
        return
    assert how == "/" and amount >= 2 and amount == int(amount)
