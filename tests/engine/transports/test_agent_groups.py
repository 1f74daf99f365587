"""Groups of local agents (``[agents.<name>]``): started with the engine when enabled, brought
up and down while it runs, shown with their group; and the same through ``wfe agents``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.demo import make_workspace
from wfe.engine.config import Config, load_config
from wfe.engine.runtime.daemon import Engine, open_engine
from wfe.engine.transports.local_agents import UnknownGroup

GUARD = 60.0
GROUPS = """
[agents.cpu]
count = 1

[agents.gpu]
enabled = false
count = 2
slots = 1
tags = ["gpu"]
site = "lab"
"""


def grouped_workspace(directory: Path) -> Config:
    """A workspace with no ``local`` agents and the groups above."""
    path = make_workspace(directory, agents=0).root / "wfe.toml"
    path.write_text(path.read_text() + GROUPS)
    return load_config(path)


def table(engine: Engine) -> dict[str, dict[str, Any]]:
    return {str(row["name"]): row for row in engine.agents()}


async def until(engine: Engine, states: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Wait until each named agent is in its state; return the whole table."""
    while True:
        rows = table(engine)
        if all(rows.get(name, {}).get("state") == state for name, state in states.items()):
            return rows
        await trio.sleep(0.05)


async def test_groups_start_when_enabled_and_go_up_and_down_on_request(tmp_path: Path) -> None:
    """The enabled group starts with the engine, the other is shown down; up starts exactly its
    agents, with the group's slots, tags and site, and they take its work; down stops exactly
    them, and they are shown down again; an unknown group is refused naming the groups."""
    config = grouped_workspace(tmp_path / "ws")
    with trio.fail_after(GUARD):
        async with open_engine(config) as engine:
            rows = await until(engine, {"cpu-1": "connected"})
            assert {name: (r["group"], r["state"]) for name, r in rows.items()} == {
                "cpu-1": ("cpu", "connected"),
                "gpu-1": ("gpu", "down"),
                "gpu-2": ("gpu", "down"),
            }

            assert await engine.agents_up("gpu") == ["gpu-1", "gpu-2"]
            rows = await until(engine, {"gpu-1": "connected", "gpu-2": "connected"})
            assert rows["cpu-1"]["state"] == "connected"
            for name in ("gpu-1", "gpu-2"):
                assert (rows[name]["slots"], rows[name]["tags"], rows[name]["site"]) == (
                    1,
                    ["gpu"],
                    "lab",
                )
            assert await engine.agents_up("gpu") == []  # already up: nothing to do

            job = await engine.run_rscript("noop", {}, requires={"tags": ["gpu"]})
            assert (await engine.wait(job)).state == "succeeded"
            [attempt] = (await engine.job(job))["attempt_list"]
            assert attempt["agent"] in ("gpu-1", "gpu-2")

            assert sorted(await engine.agents_down("gpu")) == ["gpu-1", "gpu-2"]
            rows = await until(engine, {"gpu-1": "down", "gpu-2": "down"})
            assert rows["cpu-1"]["state"] == "connected"

            with pytest.raises(UnknownGroup, match=r"no agent group 'tpu' \(groups: cpu, gpu\)"):
                await engine.agents_up("tpu")


def test_a_bad_group_stores_nothing_and_names_its_key(tmp_path: Path) -> None:
    """A group that cannot be used is refused when the configuration is read, in one line."""
    config = grouped_workspace(tmp_path / "ws")
    path = config.root / "wfe.toml"
    path.write_text(path.read_text().replace('site = "lab"', 'site = "lab"\ncolour = "red"'))
    done = subprocess.run(
        [sys.executable, "-m", "wfe", "engine", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"wfe: error: {path}: agents.gpu: unknown key(s) (colour)"
    ]
    assert not (config.root / "wfe.db").exists()


@pytest.mark.slow
def test_wfe_agents_up_and_down_from_the_command_line(tmp_path: Path) -> None:
    """``wfe agents up gpu`` / ``down gpu`` against a running ``wfe engine``: each says which
    agents it started or stopped, and ``wfe agents --json`` shows their group and state."""
    from tests.engine.cli.test_jobs import Wfe, start_engine, stop_engine

    config = grouped_workspace(tmp_path / "ws")
    path = config.root / "wfe.toml"
    process = start_engine(path, tmp_path / "engine.log")
    wfe = Wfe(path, tmp_path / "engine.log")
    try:
        assert wfe.ok("agents", "up", "gpu").strip() == "started: gpu-1, gpu-2"
        for _ in range(200):
            agents = {a["name"]: a for a in json.loads(wfe.ok("agents", "--json"))}
            if all(agents[n]["state"] == "connected" for n in ("cpu-1", "gpu-1", "gpu-2")):
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert {n: a["group"] for n, a in agents.items()} == {
            "cpu-1": "cpu",
            "gpu-1": "gpu",
            "gpu-2": "gpu",
        }
        assert all(a["state"] == "connected" for a in agents.values()), agents
        assert wfe.ok("agents", "down", "gpu").strip() == "stopped: gpu-1, gpu-2"
        agents = {a["name"]: a for a in json.loads(wfe.ok("agents", "--json"))}
        assert (agents["gpu-1"]["state"], agents["cpu-1"]["state"]) == ("down", "connected")
        refused = wfe("agents", "up", "tpu")
        assert refused.returncode != 0
        assert "no agent group 'tpu' (groups: cpu, gpu)" in refused.stderr
    finally:
        stop_engine(process)
