"""Standing settings in definitions: triggers, cron, cooldown durations, group_by and
version_policy, and the one-line errors for bad ones."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.definitions import (
    InvalidDefinition,
    TriggerKind,
    VersionPolicy,
    build_definition,
    next_tick,
    parse_duration,
)

BASE: dict[str, Any] = {
    "workflow": {"name": "s", "namespace": "n", "trigger": "continuous"},
    "query": {"where": [{"field": "kind", "op": "eq", "value": "raw"}]},
    "stages": [
        {"name": "cal", "rscript": "x", "consumes": "query", "cooldown": "0s"},
        {"name": "map", "rscript": "x", "consumes": "cal", "cooldown": "10m"},
    ],
}


def with_changes(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        table, key = path.split("__")
        target = data["workflow"] if table == "workflow" else data["stages"][int(table[1:])]
        target[key] = value
    return data


def test_the_default_trigger_is_manual() -> None:
    """Without a trigger a definition is manual: its requests are not standing."""
    data = with_changes()
    del data["workflow"]["trigger"]
    for stage in data["stages"]:
        del stage["cooldown"]
    definition = build_definition(data)
    assert definition.workflow.trigger.kind is TriggerKind.MANUAL
    assert not definition.standing
    assert definition.stages[0].version_policy is VersionPolicy.KEEP


def test_continuous_and_cron_triggers_are_standing() -> None:
    """ "continuous" and { cron = ... } make standing definitions; cooldowns are seconds."""
    definition = build_definition(with_changes())
    assert definition.standing
    assert [s.cooldown for s in definition.stages] == [0.0, 600.0]
    cron = build_definition(with_changes(workflow__trigger={"cron": "0  3 * * *"}))
    assert cron.workflow.trigger.kind is TriggerKind.CRON
    assert cron.workflow.trigger.cron == "0 3 * * *"


def test_group_by_and_version_policy_are_read() -> None:
    """group_by is a tuple of field names; version_policy "reprocess" is an enum member."""
    definition = build_definition(
        with_changes(s0__group_by=["source", "obs_date"], s0__version_policy="reprocess")
    )
    assert definition.stages[0].group_by == ("source", "obs_date")
    assert definition.stages[0].version_policy is VersionPolicy.REPROCESS


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"workflow__trigger": "sometimes"},
            "workflow.trigger: unknown trigger 'sometimes' "
            '(expected "manual", "continuous" or { cron = "0 3 * * *" })',
        ),
        (
            {"workflow__trigger": {"cron": "61 * * * *"}},
            "workflow.trigger: bad cron expression '61 * * * *':",
        ),
        (
            {"workflow__trigger": {"cron": "* * *"}},
            "workflow.trigger: bad cron expression '* * *': expected five fields",
        ),
        (
            {"s1__cooldown": "soon"},
            'stages[1].cooldown: expected a duration like "0s", "90s", "10m", "1h30m" or "1d",'
            " not 'soon'",
        ),
        ({"s1__cooldown": -5}, "stages[1].cooldown: expected a duration"),
        (
            {"s0__group_by": ["source"], "s0__max_inputs": 2},
            "stages[0].group_by: stage 'cal' has both group_by and max_inputs",
        ),
        (
            {"s0__version_policy": "always"},
            "stages[0].version_policy: expected one of 'keep', 'reprocess', not 'always'",
        ),
        (
            {"workflow__trigger": "manual"},
            "stages[1].cooldown: only standing requests have cooldowns",
        ),
    ],
)
def test_bad_standing_settings_get_one_line(changes: dict[str, Any], message: str) -> None:
    """Each bad trigger, cron expression, duration or combination is refused in one line
    naming its path."""
    with pytest.raises(InvalidDefinition) as caught:
        build_definition(with_changes(**changes))
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=10_000), st.sampled_from("smhd")),
        min_size=1,
        max_size=4,
    )
)
def test_a_duration_is_the_sum_of_its_parts(parts: list[tuple[int, str]]) -> None:
    """ "1h30m" is 5400 seconds: any sequence of number-unit parts sums its parts."""
    text = "".join(f"{n}{u}" for n, u in parts)
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    assert parse_duration(text) == sum(n * unit[u] for n, u in parts)


@given(st.text(max_size=8).filter(lambda t: not t.strip() or t.strip()[-1:].lower() not in "smhd"))
def test_text_without_a_unit_is_not_a_duration(text: str) -> None:
    """Text that does not end in a unit is refused with the hint, never read as seconds."""
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_the_next_daily_tick_is_the_next_0300_utc(after: int) -> None:
    """ "0 3 * * *" ticks at the first 03:00 UTC strictly after the given time."""
    tick = next_tick("0 3 * * *", float(after))
    when = dt.datetime.fromtimestamp(tick, tz=dt.UTC)
    assert (when.hour, when.minute, when.second) == (3, 0, 0)
    assert after < tick <= after + 86400
