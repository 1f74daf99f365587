"""Broadcasts under engine SIGKILLs: each is published once and each reaction runs once.

A real ``wfe engine`` process with a local agent runs a request whose stage publishes 12
broadcasts, one every 0.3 s; the definition's ``[reactors]`` start, for each, an action that runs
an RScript appending the broadcast's sequence to a file outside the engine's books. The engine
is SIGKILLed at random moments (a fixed seed) while it works, and started again each time.
Afterwards the file holds every sequence exactly once, and the repository one
``broadcast.stf_gen`` event per sequence: a tasklet replayed after a restart neither publishes
again nor starts a reaction twice.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wfe.engine.cli.demo import make_workspace

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

COUNT = 12
SEED = 20261207

ANNOUNCE = """
async def main(ctx, params):
    for sequence in range(1, params["count"] + 1):
        await ctx.publish("stf_gen", {"sequence": sequence, "marks": params["marks"]})
        await ctx.sleep(0.3)
    return {"results": {"published": params["count"]}}
"""

REACT = """
async def main(ctx, params):
    await ctx.rscript("mark", {"sequence": params["sequence"], "marks": params["marks"]})
"""

MARK = """#!/usr/bin/env python3
# wfe-rscript: 1
# name: mark
# version: 1.0
# interpreter: python3
# description: append the broadcast's sequence to a file outside the engine
# timeout: 60
# param sequence: int the broadcast's sequence
# param marks: str the file
import json, os, time
params = json.load(open(os.environ["WFE_PARAMS"]))
time.sleep(0.2)  # a reaction the engine may be killed in the middle of
with open(params["marks"], "a") as marks:
    marks.write(f"{params['sequence']}\\n")
"""

DEFINITION = """
[workflow]
name = "chaos"
namespace = "chaos"

[policy]
approval = "none"

[[stages]]
name = "announce"
action = "chaos.announce"
params = {{ count = {count}, marks = "{marks}" }}

[reactors]
stf_gen = "chaos.react"
"""


def wfe(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wfe", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def engine(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A ``wfe engine`` process, ready when its API port file appears; killed at the end if
    the test has not killed it."""
    port = config.parent / "run" / "api.port"
    port.unlink(missing_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "wfe", "engine", "--config", str(config)],
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 60  # wall-clock: a real process starting
        while not port.exists():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the engine did not start"  # wall-clock
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace with one local agent, the test's actions and RScript; its wfe.toml and
    the definition to submit."""
    actions, scripts = tmp_path / "actions", tmp_path / "rscripts"
    for name, text in (("announce", ANNOUNCE), ("react", REACT)):
        (actions / "chaos" / name).mkdir(parents=True)
        (actions / "chaos" / name / "10_main.py").write_text(text)
    scripts.mkdir()
    (scripts / "mark.py").write_text(MARK)
    config = make_workspace(tmp_path / "ws", agents=1, slots=4).root / "wfe.toml"
    config.write_text(
        config.read_text().replace(
            "[engine]\n",
            f"[engine]\nactions = [{str(actions)!r}]\nrscripts = [{str(scripts)!r}]\n",
            1,
        )
    )
    definition = tmp_path / "chaos.toml"
    definition.write_text(DEFINITION.format(count=COUNT, marks=tmp_path / "marks"))
    return config, definition


def test_engine_kills_neither_lose_nor_double_broadcasts_or_reactions(tmp_path: Path) -> None:
    """Three SIGKILLs of the engine at random moments of a 12-broadcast run: every sequence is
    marked exactly once by its reaction's RScript, and published exactly once."""
    config, definition = workspace(tmp_path)
    log = tmp_path / "engine.log"
    rng = random.Random(SEED)
    with engine(config, log) as process:
        submitted = wfe(config, "submit", str(definition), "--json")
        assert submitted.returncode == 0, submitted.stderr
        request = json.loads(submitted.stdout)["id"]
        time.sleep(rng.uniform(0.3, 1.5))
        process.kill()  # SIGKILL: its agents live on and come back to the next engine
        process.wait()
    kills = 1
    while kills < 3:
        with engine(config, log) as process:
            time.sleep(rng.uniform(0.5, 2.5))
            if process.poll() is None:
                process.kill()
                process.wait()
                kills += 1
    with engine(config, log):
        done = wfe(config, "request", request, "--wait", "--json", timeout=180)
        assert done.returncode == 0, (done.stdout, done.stderr, log.read_text()[-3000:])
    marks = (tmp_path / "marks").read_text().split()
    assert sorted(map(int, marks)) == list(range(1, COUNT + 1)), marks
    with contextlib.closing(sqlite3.connect(config.parent / "wfe.db")) as db:
        rows = db.execute("SELECT data FROM events WHERE kind = 'broadcast.stf_gen'").fetchall()
    published = sorted(json.loads(data)["message"]["sequence"] for (data,) in rows)
    assert published == list(range(1, COUNT + 1))
