"""Configuration tables (every top-level table not wfe's), the [testbed] table, overlays."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wfe.engine.definitions import (
    DefinitionSyntaxError,
    IncludeError,
    InvalidDefinition,
    build_definition,
    config_of,
    dump_toml,
    frozen,
    load_definition,
)

from .conftest import MINIMAL, Write

# --- the merge property ------------------------------------------------------------------------

leaves = st.integers() | st.text(max_size=3) | st.lists(st.integers(), max_size=2)
# "t*" keys hold tables and "l*" leaves in every file, as a key's type is fixed in practice
tables = st.recursive(
    st.dictionaries(st.sampled_from(["l1", "l2"]), leaves, max_size=2),
    lambda inner: st.builds(
        lambda a, b: {**a, **b},
        st.dictionaries(st.sampled_from(["l1", "l2"]), leaves, max_size=2),
        st.dictionaries(st.sampled_from(["t1", "t2"]), inner, max_size=2),
    ),
    max_leaves=8,
)
configs = st.dictionaries(st.sampled_from(["daq", "fast_processing"]), tables, max_size=2)


def leaf_paths(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    found: dict[tuple[str, ...], Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            found.update(leaf_paths(value, (*prefix, key)))
        else:
            found[(*prefix, key)] = value
    return found


@settings(max_examples=60, deadline=None)
@given(configs, configs, configs)
def test_configuration_merges_later_over_earlier_key_by_key(
    first: dict[str, Any], second: dict[str, Any], main: dict[str, Any]
) -> None:
    """Through real files (main includes first then second): every leaf of the merged
    configuration comes from the last file that sets it, the main file last, and every
    leaf an earlier file sets that no later one does is kept."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "first.toml").write_text(dump_toml(first))
        (root / "second.toml").write_text(dump_toml(second))
        head = {"workflow": {"name": "w", "namespace": "n"}}
        head["workflow"]["includes"] = ["first.toml", "second.toml"]  # type: ignore[assignment]
        body = dump_toml(head) + '\n[[stages]]\nname = "s"\nrscript = "x"\n\n' + dump_toml(main)
        (root / "main.toml").write_text(body)
        definition = load_definition(root / "main.toml")
    expected: dict[tuple[str, ...], Any] = {}
    for layer in (first, second, main):
        expected.update(leaf_paths(layer))
    assert leaf_paths(dict(definition.config)) == expected
    assert set(definition.config) == set(first) | set(second) | set(main)
    for name in definition.config:  # stored in the expanded form where they were written
        assert definition.expanded[name] == definition.config[name]


# --- near misses and other bad tables ----------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "close"),
    [
        ("stage", "stages"),
        ("polcy", "policy"),
        ("Workflow", "workflow"),
        ("querry", "query"),
        ("STAGES", "stages"),
    ],
)
def test_a_near_miss_of_a_wfe_table_is_refused(write: Write, table: str, close: str) -> None:
    """A table whose name is close to one of wfe's is taken for a typo, in one line."""
    path = write("main.toml", MINIMAL + f"\n[{table}]\nx = 1\n")
    with pytest.raises(InvalidDefinition) as info:
        load_definition(path)
    assert str(info.value).endswith(f"main.toml: {table}: unknown key (did you mean {close}?)")
    assert "\n" not in str(info.value)


def test_other_tables_are_configuration(write: Write) -> None:
    """Tables not close to wfe's, [parameters] included, are the definition's config and
    change its sha256; build_definition(expanded) gives them back."""
    path = write("main.toml", MINIMAL + "\n[parameters]\nstf_count = 5\n[daq.timing]\nx = 1.5\n")
    definition = load_definition(path)
    assert dict(definition.config) == {
        "parameters": {"stf_count": 5},
        "daq": {"timing": {"x": 1.5}},
    }
    rebuilt = build_definition(definition.expanded)
    assert (rebuilt.config, rebuilt.sha256) == (definition.config, definition.sha256)
    plain = load_definition(write("plain.toml", MINIMAL))
    assert plain.config == {} and plain.sha256 != definition.sha256


def test_a_top_level_value_that_is_not_a_table_is_refused(write: Write) -> None:
    """Configuration is tables; a stray top-level key is refused naming wfe's tables."""
    with pytest.raises(InvalidDefinition, match=r"stf_count: unknown key \(known: workflow,"):
        load_definition(write("main.toml", "stf_count = 5\n" + MINIMAL))


def test_config_for_tasklets_is_read_only() -> None:
    """config_of gives the configuration tables only, and nothing in it can be changed."""
    config = config_of({"workflow": {"name": "w"}, "daq": {"t": {"x": [1, 2]}}})
    assert list(config) == ["daq"]
    with pytest.raises(TypeError):
        config["daq"]["t"]["x"] = 3
    with pytest.raises(TypeError):
        config["new"] = 1  # type: ignore[index]
    assert config["daq"]["t"]["x"] == (1, 2)
    assert frozen([{"a": 1}])[0]["a"] == 1


# --- [testbed] in a definition -----------------------------------------------------------------


def test_testbed_namespace_is_the_namespace(write: Write) -> None:
    """[testbed] namespace (the seed's instance table) is the namespace, over [workflow]'s,
    and a definition with it needs no [workflow] namespace."""
    text = MINIMAL.replace('namespace = "test"\n', "") + '\n[testbed]\nnamespace = "torre1"\n'
    assert load_definition(write("a.toml", text)).namespace == "torre1"
    both = MINIMAL + '\n[testbed]\nnamespace = "torre1"\n'
    assert load_definition(write("b.toml", both)).namespace == "torre1"


@pytest.mark.parametrize(
    ("testbed", "message"),
    [
        ('namespace = ""', "testbed.namespace: empty: set the namespace of this testbed instance"),
        ('namespace = "  "', "testbed.namespace: empty"),
        ("namespace = 3", "testbed.namespace: expected a string"),
        ('namespce = "x"', "testbed.namespce: unknown key (did you mean namespace?)"),
        ("", "testbed.namespace: required"),
        ('namespace = "a b"', "workflow.namespace: namespace 'a b': use letters"),
    ],
)
def test_a_bad_testbed_table_is_refused(write: Write, testbed: str, message: str) -> None:
    """Each mistake in [testbed] is one line naming the key."""
    path = write("main.toml", MINIMAL + f"\n[testbed]\n{testbed}\n")
    with pytest.raises(InvalidDefinition) as info:
        load_definition(path)
    assert f"main.toml: {message}" in str(info.value)
    assert "\n" not in str(info.value)


# --- overlays ----------------------------------------------------------------------------------

BASE = MINIMAL + "\n[daq_state_machine]\nstf_interval = 2.0\nbroadcast_delay = 1\n"
MAIN = BASE + "\n[fast_processing]\nstf_count = 10\nslices_per_sample = 15\n"


def test_an_overlay_sets_the_namespace_and_overrides_configuration(write: Write) -> None:
    """The overlay's namespace is the request's, its tables override key by key (siblings
    kept), a table the definition lacks is not applied but named, and all is recorded."""
    main = write("main.toml", MAIN)
    overlay = write(
        "testbed.toml",
        """
        [testbed]
        namespace = "torre1"

        [fast_processing]
        stf_count = 5

        [daq_state_machine]
        stf_interval = 1.0

        [stf_processing]
        extra = true
        """,
    )
    definition = load_definition(main, overlay=overlay)
    assert definition.namespace == "torre1"
    assert definition.config["fast_processing"] == {"stf_count": 5, "slices_per_sample": 15}
    assert definition.config["daq_state_machine"] == {"stf_interval": 1.0, "broadcast_delay": 1}
    assert "stf_processing" not in definition.config
    assert definition.expanded["testbed"] == {
        "namespace": "torre1",
        "overlay": str(overlay.resolve()),
        "unused": ["stf_processing"],
    }
    assert build_definition(definition.expanded).sha256 == definition.sha256
    assert definition.sha256 != load_definition(main).sha256


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fast_processing]\nstf_count = 5\n", "testbed: required"),
        ('[testbed]\nnamespace = ""\n', "testbed.namespace: empty"),
        ("[testbed]\n", "testbed.namespace: required"),
        ('[testbed]\nnamespace = "t"\nrealtime = true\n', "testbed.realtime: unknown key"),
        (
            '[testbed]\nnamespace = "t"\n[policy]\napproval = "none"\n',
            "policy: an overlay overrides",
        ),
        ('[testbed]\nnamespace = "t"\n[fast_procesing]\nx = 1\n', "did you mean fast_processing?"),
        (
            '[testbed]\nnamespace = "t"\n[stage]\nx = 1\n',
            "stage: unknown key (did you mean stages?)",
        ),
        ('[testbed]\nnamespace = "t"\nstf_count = 5\n', "stf_count: unknown key"),
    ],
)
def test_a_bad_overlay_is_refused_naming_its_file(write: Write, text: str, message: str) -> None:
    """Every mistake in an overlay is one line naming the overlay file."""
    main = write("main.toml", MAIN)
    overlay = write("testbed.toml", text)
    with pytest.raises(InvalidDefinition) as info:
        load_definition(main, overlay=overlay)
    assert str(info.value).startswith(f"{overlay}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_or_broken_overlay_file_is_refused(write: Write, tmp_path: Path) -> None:
    """A missing overlay and one that is not TOML are refused naming the file."""
    main = write("main.toml", MAIN)
    with pytest.raises(IncludeError, match=r"nothere.toml: no such file"):
        load_definition(main, overlay=tmp_path / "nothere.toml")
    with pytest.raises(DefinitionSyntaxError, match=r"bad.toml:1: "):
        load_definition(main, overlay=write("bad.toml", "[testbed\n"))


overlay_tables = st.dictionaries(st.sampled_from(["daq", "fast_processing", "other"]), tables)


@settings(max_examples=60, deadline=None)
@given(configs, overlay_tables)
def test_an_overlay_merges_over_matching_tables_only(
    config: dict[str, Any], overlay: dict[str, Any]
) -> None:
    """Through real files: every leaf of an overlay table the definition has wins, every
    other leaf of the definition is kept, and the tables it lacks are named, not applied."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "main.toml").write_text(MINIMAL + "\n" + dump_toml(config))
        testbed = {"testbed": {"namespace": "torre1"}, **overlay}
        (root / "testbed.toml").write_text(dump_toml(testbed))
        definition = load_definition(root / "main.toml", overlay=root / "testbed.toml")
    applied = {k: v for k, v in overlay.items() if k in config}
    expected = {**leaf_paths(config), **leaf_paths(applied)}
    assert leaf_paths(dict(definition.config)) == expected
    assert set(definition.config) == set(config)
    assert definition.expanded["testbed"].get("unused", []) == [
        k for k in overlay if k not in config
    ]
    assert definition.namespace == "torre1"
