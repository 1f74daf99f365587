"""A stage's ``on_retry``: parsed and checked with the definition, applied by the policy."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.config import JobsSection
from wfe.engine.definitions import load_definition
from wfe.engine.definitions.on_retry import BadRule, apply_rules, parse_change
from wfe.engine.dispatch.jobspec import live_job
from wfe.engine.requests.batches import requirements
from wfe.engine.runtime.jobs import JobRow, JobState

from .conftest import refused

HEAD = '[workflow]\nname = "demo"\nnamespace = "t"\n'
STAGE = '[[stages]]\nname = "s"\nrscript = "x"\n'


def test_on_retry_is_kept_as_written(write: Any) -> None:
    """A valid rule loads and stays in the stage as written; without one, it is empty."""
    text = (
        HEAD + STAGE + 'retries = 2\nrequires = { memory = "256M" }\non_retry = { memory = "x2" }\n'
    )
    stage = load_definition(write("main.toml", text)).stage("s")
    assert dict(stage.on_retry) == {"memory": "x2"}
    plain = load_definition(write("plain.toml", HEAD + STAGE)).stage("s")
    assert dict(plain.on_retry) == {}


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ('{ cpus = "x2" }', "stages[0].on_retry: unknown key 'cpus' (known: memory, max_inputs)"),
        ('{ memory = "/2" }', 'stages[0].on_retry: memory: expected "x<factor>" (e.g. "x2")'),
        ('{ memory = "x1" }', "stages[0].on_retry: memory: 'x1' must multiply by more than 1"),
        ("{ memory = 2 }", 'stages[0].on_retry: memory: expected a string like "x2" or "+1G"'),
        ('"x2"', "stages[0].on_retry: expected a table"),
    ],
)
def test_bad_rules_are_refused_with_one_line(write: Any, rules: str, expected: str) -> None:
    """Unknown keys and malformed changes each get one line naming them (max_inputs's own
    refusals: test_on_retry_split.py)."""
    text = HEAD + STAGE + f'retries = 1\nrequires = {{ memory = "1G" }}\non_retry = {rules}\n'
    assert refused(write, text).startswith(expected)


def test_a_rule_without_retries_or_memory_is_refused(write: Any) -> None:
    """A rule that could never apply (no retries, or no memory asked for) is refused."""
    no_retries = HEAD + STAGE + 'requires = { memory = "1G" }\non_retry = { memory = "x2" }\n'
    assert refused(write, no_retries) == (
        "stages[0].on_retry: stage 's' has retries = 0, so no retry to change"
    )
    no_memory = HEAD + STAGE + 'retries = 1\non_retry = { memory = "+1G" }\n'
    assert refused(write, no_memory) == (
        "stages[0].on_retry.memory: stage 's' asks for no memory to change (set requires.memory)"
    )


def test_rules_change_memory_and_nothing_else() -> None:
    """x multiplies, + adds a size; other requirements and a job with no memory are unchanged."""
    req = {"memory": 100 << 20, "cpus": 2, "tags": ["a"]}
    assert apply_rules({"memory": "x2"}, req) == {**req, "memory": 200 << 20}
    assert apply_rules({"memory": "+1G"}, req) == {**req, "memory": (100 << 20) + (1 << 30)}
    assert apply_rules({"memory": "x1.5"}, {"memory": 1000}) == {"memory": 1500}
    assert apply_rules({"memory": "x2"}, {"cpus": 1}) == {"cpus": 1}
    assert req == {"memory": 100 << 20, "cpus": 2, "tags": ["a"]}  # not changed in place


@given(st.text(max_size=12))
def test_any_text_parses_to_a_growth_or_a_one_line_error(text: str) -> None:
    """Every value either parses to a change that grows memory or is refused with one line."""
    try:
        how, amount = parse_change("memory", text)
    except BadRule as exc:
        assert "\n" not in str(exc).replace(repr(text), "")
        return
    grown = apply_rules({"memory": text}, {"memory": 1 << 20})["memory"]
    assert how in ("x", "+") and grown > 1 << 20


def test_a_request_stage_job_carries_its_rules(write: Any) -> None:
    """What a request stage submits to the controller includes its on_retry rules, and the
    live job read back from those requirements has them apart from what agents are matched on."""
    text = (
        HEAD + STAGE + 'retries = 1\nrequires = { memory = "1G" }\non_retry = { memory = "x2" }\n'
    )
    stage = load_definition(write("main.toml", text)).stage("s")
    submitted = requirements(stage)
    assert submitted == {"cpus": 1, "memory": 1 << 30, "on_retry": {"memory": "x2"}}
    assert "on_retry" not in requirements(load_definition(write("p.toml", HEAD + STAGE)).stage("s"))
    row = JobRow(
        id="j1",
        kind="rscript",
        name="x",
        parent_id=None,
        root_id="j1",
        call_seq=None,
        params={},
        state=JobState.QUEUED,
        priority=0,
        requirements={**submitted, "timeout": 60.0},
        max_attempts=2,
        attempts=0,
        created_at=0.0,
        started_at=None,
        ended_at=None,
        result=None,
        error=None,
        request_id=None,
    )
    job = live_job(row, JobsSection(), seq=1)
    assert job.on_retry == {"memory": "x2"}
    assert job.requirements == {"cpus": 1, "memory": 1 << 30}
