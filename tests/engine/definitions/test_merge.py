"""Includes and merging: order, override, nesting, diamonds, cycles, missing files."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.definitions import (
    DagError,
    IncludeError,
    deep_merge,
    expand_includes,
    load_definition,
)


def test_includes_load_in_order_and_the_main_file_has_the_last_word(write: Any) -> None:
    """A later include overrides an earlier one; the including file overrides both."""
    write("a.toml", '[policy]\napproval = "none"\nmax_allocations = 1\n[params.x]\ntype = "int"\n')
    write("b.toml", "[policy]\nmax_allocations = 2\n")
    main = write(
        "main.toml",
        """
        [workflow]
        name = "demo"
        namespace = "ns"
        includes = ["a.toml", "b.toml"]

        [policy]
        on_stage_failure = "complete"

        [[stages]]
        name = "s"
        rscript = "noop"
        """,
    )
    merged, files = expand_includes(main)
    assert merged["policy"] == {
        "approval": "none",
        "max_allocations": 2,
        "on_stage_failure": "complete",
    }
    assert [f.name for f in files] == ["a.toml", "b.toml", "main.toml"]
    assert "includes" not in merged["workflow"]


def test_main_file_overrides_an_included_value(write: Any, minimal: str) -> None:
    """The same key set in an include and in the main file takes the main file's value."""
    write("shared.toml", '[workflow]\nnamespace = "shared"\ndescription = "from shared"\n')
    main = write(
        "main.toml",
        minimal.replace('namespace = "test"', 'namespace = "mine"\nincludes = ["shared.toml"]'),
    )
    definition = load_definition(main)
    assert definition.namespace == "mine"
    assert definition.workflow.description == "from shared"


def test_nested_includes_are_relative_to_the_including_file(write: Any, minimal: str) -> None:
    """An include's own includes resolve against its directory, depth first."""
    write("lib/base.toml", "[policy]\nmax_allocations = 7\napproval = 'none'\n")
    write("lib/site.toml", 'includes_marker = 1\n[workflow]\nincludes = ["base.toml"]\n')
    main = write(
        "main.toml",
        minimal.replace('namespace = "test"', 'namespace = "t"\nincludes = ["lib/site.toml"]'),
    )
    merged, files = expand_includes(main)
    assert [f.name for f in files] == ["base.toml", "site.toml", "main.toml"]
    assert merged["policy"]["max_allocations"] == 7
    assert merged["includes_marker"] == 1


def test_a_diamond_merges_the_shared_file_once_at_its_first_occurrence(write: Any) -> None:
    """main -> [a, b], a -> common, b -> common: a's override of common survives."""
    write("common.toml", "[policy]\nmax_allocations = 1\n")
    write("a.toml", '[workflow]\nincludes = ["common.toml"]\n[policy]\nmax_allocations = 5\n')
    write("b.toml", '[workflow]\nincludes = ["common.toml"]\n[policy]\napproval = "none"\n')
    main = write("main.toml", '[workflow]\nincludes = ["a.toml", "b.toml"]\n')
    merged, files = expand_includes(main)
    assert [f.name for f in files] == ["common.toml", "a.toml", "b.toml", "main.toml"]
    assert merged["policy"] == {"max_allocations": 5, "approval": "none"}


def test_stages_merge_by_name_and_keep_their_position(write: Any) -> None:
    """A stage named again is deep-merged in place; a new name is appended."""
    write(
        "base.toml",
        """
        [[stages]]
        name = "one"
        rscript = "a"
        requires = { cpus = 2, tags = ["x"] }

        [[stages]]
        name = "two"
        rscript = "b"
        after = ["one"]
        """,
    )
    main = write(
        "main.toml",
        """
        [workflow]
        name = "demo"
        namespace = "ns"
        includes = ["base.toml"]

        [[stages]]
        name = "three"
        rscript = "c"

        [[stages]]
        name = "one"
        requires = { memory = "1G", tags = ["y", "z"] }
        """,
    )
    definition = load_definition(main)
    assert [s.name for s in definition.stages] == ["one", "two", "three"]
    one = definition.stage("one")
    assert one.rscript == "a"
    assert one.requires.cpus == 2
    assert one.requires.memory == 1024**3
    assert one.requires.tags == ("y", "z")  # arrays are replaced, not appended


def test_include_cycle_names_the_chain(write: Any) -> None:
    """a -> b -> c -> a is refused with every file of the cycle in order."""
    write("a.toml", '[workflow]\nincludes = ["b.toml"]\n')
    write("b.toml", '[workflow]\nincludes = ["c.toml"]\n')
    write("c.toml", '[workflow]\nincludes = ["a.toml"]\n')
    main = write("main.toml", '[workflow]\nincludes = ["a.toml"]\n')
    with pytest.raises(IncludeError) as info:
        expand_includes(main)
    message = str(info.value)
    assert message.startswith("include cycle: ")
    names = [Path(p).name for p in message.removeprefix("include cycle: ").split(" -> ")]
    assert names == ["a.toml", "b.toml", "c.toml", "a.toml"]


def test_a_file_including_itself_is_a_cycle(write: Any) -> None:
    """The shortest cycle is refused too."""
    main = write("main.toml", '[workflow]\nincludes = ["main.toml"]\n')
    with pytest.raises(IncludeError, match=r"include cycle: .*main.toml -> .*main.toml$"):
        expand_includes(main)


def test_missing_include_names_the_file_and_who_included_it(write: Any) -> None:
    """The error says which file is missing and which file asked for it."""
    write("a.toml", '[workflow]\nincludes = ["nothere.toml"]\n')
    main = write("main.toml", '[workflow]\nincludes = ["a.toml"]\n')
    with pytest.raises(IncludeError) as info:
        expand_includes(main)
    message = str(info.value)
    assert "nothere.toml: no such file (included by " in message
    assert message.endswith("a.toml)")
    assert "\n" not in message


def test_missing_main_file_is_a_clear_error(tmp_path: Path) -> None:
    """Loading a file that does not exist names it."""
    with pytest.raises(IncludeError, match=r"nope.toml: no such file$"):
        load_definition(tmp_path / "nope.toml")


def test_includes_must_be_an_array_of_names(write: Any) -> None:
    """``includes = "a.toml"`` is refused, naming the file and the key."""
    main = write("main.toml", '[workflow]\nincludes = "a.toml"\n')
    with pytest.raises(IncludeError, match=r"main.toml: workflow.includes: expected an array"):
        expand_includes(main)


def test_a_file_naming_a_stage_twice_is_refused(write: Any) -> None:
    """Duplicates inside one file are not silently merged together."""
    main = write(
        "main.toml",
        '[[stages]]\nname = "x"\nrscript = "a"\n[[stages]]\nname = "x"\nrscript = "b"\n',
    )
    with pytest.raises(DagError, match=r"main.toml: stages\[1\].name: duplicate stage 'x'"):
        expand_includes(main)


# --- deep_merge properties ---------------------------------------------------------------------

leaves = st.integers() | st.text(max_size=3) | st.lists(st.integers(), max_size=2)
# Keys "t*" always hold tables and "l*" leaves, as in real definitions where a key's type
# is fixed; (when a later file changes a table to a scalar, the fold order decides.)
tables = st.recursive(
    st.dictionaries(st.sampled_from(["l1", "l2"]), leaves, max_size=2),
    lambda inner: st.builds(
        lambda a, b: {**a, **b},
        st.dictionaries(st.sampled_from(["l1", "l2"]), leaves, max_size=2),
        st.dictionaries(st.sampled_from(["t1", "t2"]), inner, max_size=2),
    ),
    max_leaves=10,
)


@given(tables, tables, tables)
def test_deep_merge_is_associative(a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> None:
    """Merging includes one by one or pre-merged gives the same result."""
    assert deep_merge(deep_merge(a, b), c) == deep_merge(a, deep_merge(b, c))


@given(tables, tables)
def test_deep_merge_leaves_its_arguments_alone(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Inputs are not mutated, and the result shares no mutable part with them."""
    a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
    merged = deep_merge(a, b)
    assert (a, b) == (a0, b0)
    assert deep_merge(a, {}) == a and deep_merge({}, b) == b and deep_merge(a, a) == a
    for key, value in b.items():
        if not isinstance(value, dict):
            assert merged[key] == value  # the later scalar or array wins


@given(
    st.lists(st.sampled_from(["p", "q", "r"]), unique=True),
    st.lists(st.sampled_from(["p", "q", "r", "s"]), unique=True),
)
def test_stage_merge_keeps_first_order_then_appends(base: list[str], over: list[str]) -> None:
    """Merged stage names: the base's order, then new names in the override's order."""
    merged = deep_merge(
        {"stages": [{"name": n, "v": 1} for n in base]},
        {"stages": [{"name": n, "w": 2} for n in over]},
    )
    names = [s["name"] for s in merged["stages"]]
    assert names == base + [n for n in over if n not in base]
    for stage in merged["stages"]:
        assert ("v" in stage) == (stage["name"] in base)
        assert ("w" in stage) == (stage["name"] in over)
