"""The stage DAG: deterministic order, and cycles, unknown and duplicate stages refused
with the names involved."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.definitions import (
    DagError,
    Definition,
    UnknownRScript,
    build_definition,
    check_actions,
    check_rscripts,
    downstream,
    require_known,
    topological_order,
    upstream,
)


def definition(*stages: dict[str, Any], query: bool = False) -> Definition:
    data: dict[str, Any] = {
        "workflow": {"name": "demo", "namespace": "t"},
        "stages": [{"rscript": "noop", **s} for s in stages],
    }
    if query:
        data["query"] = {}
    return build_definition(data)


def dag_error(*stages: dict[str, Any]) -> str:
    with pytest.raises(DagError) as info:
        definition(*stages)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_order_follows_dependencies_and_keeps_definition_order_for_ties() -> None:
    """Each stage comes after everything it depends on; independent stages keep their
    written order."""
    d = definition(
        {"name": "map", "after": ["grid", "qa"]},
        {"name": "qa", "after": ["calibrate"]},
        {"name": "calibrate"},
        {"name": "grid", "consumes": "calibrate"},
        {"name": "report"},
    )
    assert topological_order(d) == ["calibrate", "qa", "grid", "map", "report"]


def test_unknown_stage_in_after_names_both_stages() -> None:
    """The dependent stage and the missing one are both named."""
    message = dag_error({"name": "a"}, {"name": "b", "after": ["a", "calbrate"]})
    assert message == "stages[1].after: stage 'b' depends on unknown stage 'calbrate'"


def test_unknown_stage_in_consumes_names_both_stages() -> None:
    """Consuming a stage that does not exist names both."""
    message = dag_error({"name": "a"}, {"name": "b", "consumes": {"stage": "zz"}})
    assert message == "stages[1].consumes: stage 'b' consumes unknown stage 'zz'"


def test_cycle_names_the_stages_in_order() -> None:
    """a -> b -> c -> a (arrows downstream) is named in that order."""
    message = dag_error(
        {"name": "a", "after": ["c"]},
        {"name": "b", "after": ["a"]},
        {"name": "c", "consumes": "b"},
        {"name": "d"},
    )
    assert message == "stages: cycle: a -> b -> c -> a"


def test_a_stage_after_itself_is_a_cycle() -> None:
    """Depending on itself is the shortest cycle."""
    assert dag_error({"name": "a"}, {"name": "b", "after": ["b"]}) == "stages: cycle: b -> b"


def test_cycle_behind_an_acyclic_prefix_names_only_the_cycle() -> None:
    """Stages leading into a cycle are not part of its name."""
    message = dag_error(
        {"name": "start"},
        {"name": "x", "after": ["start", "y"]},
        {"name": "y", "after": ["x"]},
    )
    assert message == "stages: cycle: x -> y -> x"


def test_duplicate_stage_names_are_refused() -> None:
    """Two stages with one name are refused (possible when building from data)."""
    assert dag_error({"name": "a"}, {"name": "a"}) == "stages[1].name: duplicate stage 'a'"


def test_upstream_and_downstream() -> None:
    """Transitive dependencies in both directions, in run order."""
    d = definition(
        {"name": "a"},
        {"name": "b", "after": ["a"]},
        {"name": "c", "after": ["b"]},
        {"name": "d", "after": ["a"]},
        {"name": "e"},
    )
    assert upstream(d, "c") == ["a", "b"]
    assert downstream(d, "a") == ["b", "c", "d"]
    assert downstream(d, "e") == [] and upstream(d, "a") == []


def test_check_rscripts_and_actions_report_unknown_names() -> None:
    """Unknown RScripts and actions are listed per stage; require_known raises one line."""
    d = definition(
        {"name": "a", "rscript": "calibrate"},
        {"name": "b", "rscript": "gird"},
        {"name": "c", "rscript": None, "action": "catalog.nope"},
    )
    known = {"calibrate", "grid"}.__contains__
    assert check_rscripts(d, known) == ["stage 'b': unknown RScript 'gird'"]
    assert check_actions(d, lambda name: False) == ["stage 'c': unknown action 'catalog.nope'"]
    assert check_rscripts(d, lambda name: True) == []
    with pytest.raises(UnknownRScript) as info:
        require_known(d, rscript=known, action=lambda name: False)
    assert str(info.value) == (
        "stage 'b': unknown RScript 'gird'; stage 'c': unknown action 'catalog.nope'"
    )
    require_known(d, rscript=lambda n: True, action=lambda n: True)


@st.composite
def dags(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Random DAGs: stage i may depend only on stages before it in a hidden order, and the
    written order is a random permutation of that."""
    count = draw(st.integers(min_value=1, max_value=8))
    names = [f"s{i}" for i in range(count)]
    stages = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        stages.append({"name": name, "after": deps})
    return draw(st.permutations(stages))


@given(dags())
def test_order_is_a_topological_order_and_deterministic(stages: list[dict[str, Any]]) -> None:
    """Every dependency comes first, and the same definition always gives the same order."""
    d = definition(*stages)
    order = topological_order(d)
    assert sorted(order) == sorted(s["name"] for s in stages)
    for stage in stages:
        for dep in stage["after"]:
            assert order.index(dep) < order.index(stage["name"])
    assert order == topological_order(definition(*stages))


@given(dags(), st.data())
def test_adding_a_back_edge_is_reported_as_a_real_cycle(
    stages: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Making an upstream stage depend on a downstream one is refused, and the cycle named
    is one: each stage in it is followed by a stage depending on it."""
    original = definition(*stages)
    order = topological_order(original)
    i = data.draw(st.integers(0, len(order) - 1))
    j = data.draw(st.integers(i, len(order) - 1))
    makes_cycle = i == j or order[i] in upstream(original, order[j])
    by_name = {s["name"]: s for s in stages}
    by_name[order[i]]["after"] = [*by_name[order[i]]["after"], order[j]]
    if not makes_cycle:
        assert order[j] in upstream(definition(*stages), order[i])  # accepted, edge kept
        return
    with pytest.raises(DagError) as info:
        definition(*stages)
    names = str(info.value).removeprefix("stages: cycle: ").split(" -> ")
    assert names[0] == names[-1]
    for before, after in zip(names, names[1:], strict=False):
        assert before in by_name[after]["after"]
