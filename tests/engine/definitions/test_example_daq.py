"""The seed's DAQ configuration files in examples/daq: they validate with ``wfe validate``,
their expanded form merges as the seed says, the namespace cannot go missing, the seed's
testbed.toml applies as an overlay, and an action of the request reads it all as
``ctx.config``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from wfe.engine.cli.requests import submission
from wfe.engine.definitions import NAMESPACE_REQUIRED, InvalidDefinition, load_definition

DAQ = Path(__file__).resolve().parents[3] / "examples" / "daq"
MAINS = ("stf_processing_default.toml", "fast_processing_default.toml")
FILES = ("daq_state_machine.toml", *MAINS)


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wfe", "validate", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def read(name: str) -> dict[str, Any]:
    return tomllib.loads((DAQ / name).read_text())


@pytest.mark.parametrize("name", FILES)
def test_the_seed_files_validate(name: str) -> None:
    """`wfe validate` accepts each file and prints its expanded form."""
    done = validate(DAQ / name)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["namespace"] == "epic-daq"


@pytest.mark.parametrize("name", MAINS)
def test_the_expanded_form_has_the_main_file_over_the_included_one(name: str) -> None:
    """The main file's values win, the included file's other keys and tables are kept."""
    done = validate(DAQ / name)
    assert done.returncode == 0, done.stderr
    expanded = json.loads(done.stdout)["expanded"]
    base, main = read("daq_state_machine.toml"), read(name)
    main["workflow"].pop("includes")
    # [workflow]: name and description from the main file, namespace kept from the base
    assert expanded["workflow"] == {**base["workflow"], **main["workflow"]}
    assert expanded["workflow"]["name"] == "stf_datataking" != base["workflow"]["name"]
    assert expanded["workflow"]["namespace"] == "epic-daq"
    # the included configuration table whole, the main file's beside it
    assert expanded["daq_state_machine"] == base["daq_state_machine"]
    section = name.removesuffix("_default.toml")
    assert expanded[section] == main[section]
    assert expanded["stages"] == base["stages"]


def test_removing_the_namespace_is_refused(tmp_path: Path) -> None:
    """Without the namespace every file is refused in one line; an overlay that names one
    makes them valid again (the seed's model), and an empty one is refused."""
    copy = tmp_path / "daq"
    shutil.copytree(DAQ, copy)
    base = copy / "daq_state_machine.toml"
    text = base.read_text()
    assert 'namespace = "epic-daq"\n' in text
    base.write_text(text.replace('namespace = "epic-daq"\n', ""))
    for name in FILES:
        done = validate(copy / name)
        assert done.returncode != 0
        assert done.stderr.strip().endswith(NAMESPACE_REQUIRED), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    fast = copy / "fast_processing_default.toml"
    assert load_definition(fast, overlay=copy / "testbed.toml").namespace == "your-namespace"
    empty = copy / "empty.toml"
    empty.write_text('[testbed]\nnamespace = ""\n')
    with pytest.raises(InvalidDefinition, match=r"empty.toml: testbed.namespace: empty"):
        load_definition(fast, overlay=empty)


def test_the_testbed_overlay_applies_to_both_workflows() -> None:
    """examples/daq/testbed.toml: its namespace and stf_count for fast processing; the
    same file with standard processing names [fast_processing] as not applied."""
    overlay = DAQ / "testbed.toml"
    fast = load_definition(DAQ / "fast_processing_default.toml", overlay=overlay)
    assert fast.namespace == "your-namespace"
    assert fast.config["fast_processing"] == {**read(MAINS[1])["fast_processing"], "stf_count": 5}
    assert fast.config["daq_state_machine"] == read(FILES[0])["daq_state_machine"]
    stf = load_definition(DAQ / "stf_processing_default.toml", overlay=overlay)
    assert stf.expanded["testbed"]["unused"] == ["fast_processing"]
    assert "fast_processing" not in stf.config


def test_wfe_validate_applies_an_overlay_and_warns_of_what_it_skipped() -> None:
    """`wfe validate FILE --overlay testbed.toml` prints the expanded form with the overlay's
    namespace and values; a table of the overlay the definition lacks is one warning line."""
    done = subprocess.run(
        [sys.executable, "-m", "wfe", "validate", "--json", str(DAQ / MAINS[0]),
         "--overlay", str(DAQ / "testbed.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["namespace"] == "your-namespace"
    assert done.stderr.splitlines() == [
        f"warning: {DAQ / 'testbed.toml'}: [fast_processing] matches no table of the definition"
    ]


async def test_a_stage_action_reads_the_configuration_as_ctx_config(tmp_path: Path) -> None:
    """Submitted with the overlay to a real engine, the example's daq.parameters action
    gets the merged configuration as ctx.config and builds the seed's DAQ parameters:
    the base, the fast_processing section over it, the overlay's stf_count over that.
    Run on its own (not by a request's stage), the same action sees an empty config;
    `wfe submit --overlay` records the namespace and warns of a table it did not apply."""
    from tests.engine.requests.conftest import open_world, workspace

    ws = workspace(tmp_path / "ws", agents=1, slots=2)
    shutil.copytree(DAQ / "actions" / "daq", ws.root / "actions" / "daq")
    async with open_world(tmp_path) as world:
        payload = submission(
            DAQ / "fast_processing_default.toml", user="alice", overlay=DAQ / "testbed.toml"
        )
        record = await world.call("submit", **payload)
        assert record["namespace"] == "your-namespace"
        await world.call("approve", request=record["id"])
        assert (await world.wait(record["id"]))["state"] == "completed"
        jobs = (await world.detail(record["id"]))["jobs"]
        status = await world.call("status", job=jobs[0]["job"])
        alone = (await world.call("run", action="daq.parameters"))["job"]
        assert (await world.call("wait", job=alone))["state"] == "succeeded"
        outside = await world.call("status", job=alone)
        code, out, err = await world.wfe(
            "submit",
            str(DAQ / "stf_processing_default.toml"),
            "--overlay",
            str(DAQ / "testbed.toml"),
        )
        assert code == 0, err
        assert "[fast_processing] matches no table of the definition" in err
        shown = await world.call("request", request=out.strip())
    assert shown["namespace"] == "your-namespace"
    assert outside["result"] == {"results": {}}  # not a request's stage: ctx.config is {}
    daq = dict(read(FILES[0])["daq_state_machine"])
    daq.update(read(MAINS[1])["fast_processing"])
    daq["stf_count"] = 5
    assert status["result"] == {"results": daq}
    assert status["result"]["results"]["physics_period_count"] == 1  # fast over base
