"""A retry that adapts, for real: a script over its memory limit is retried with doubled memory.

A real engine with a real local agent (its keeper sets RLIMIT_AS to the job's memory), real
time, every wait under ``trio.fail_after``. The script allocates 300 MiB; the job asks for
200 MiB with ``on_retry = { memory = "x2" }``, so its first attempt runs out of memory and
its second, with 400 MiB, succeeds.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.demo import make_workspace
from wfe.engine.config import load_config
from wfe.engine.runtime.daemon import open_engine
from wfe.engine.runtime.jobs import JobState

pytestmark = pytest.mark.slow

GUARD = 60.0
MIB = 1 << 20
GREEDY = """#!/usr/bin/env python3
# wfe-rscript: 1
# name: greedy
# version: 1.0
# interpreter: python3
# description: allocate some MiB of memory and succeed
# param mib: int how many MiB to allocate
import json, os
mib = json.load(open(os.environ["WFE_PARAMS"]))["mib"]
data = bytearray(mib << 20)
print("allocated", len(data) >> 20, "MiB")
"""


def workspace(tmp_path: Path) -> Any:
    config = make_workspace(tmp_path / "ws", agents=1)
    scripts = config.root / "rscripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "greedy.py").write_text(GREEDY)
    toml = config.root / "wfe.toml"
    text = toml.read_text().replace("[engine]\n", '[engine]\nrscripts = ["rscripts"]\n', 1)
    toml.write_text(text)
    return load_config(toml)


async def test_an_out_of_memory_attempt_is_retried_with_doubled_memory(tmp_path: Path) -> None:
    """Attempt 1 (200 MiB) fails saying it ran out of memory and records that it ran with
    200 MiB; attempt 2 runs with 400 MiB (recorded, and kept on the job) and succeeds."""
    config = workspace(tmp_path)
    with trio.fail_after(GUARD):
        async with open_engine(config) as engine:
            job_id = await engine.controller.submit(
                "greedy",
                {"mib": 300},
                requires={"memory": 200 * MIB, "on_retry": {"memory": "x2"}},
                retries=1,
                backoff=0.1,
            )
            outcome = await engine.controller.completions.wait(job_id)
            assert outcome.state is JobState.SUCCEEDED, outcome
    conn = sqlite3.connect(f"file:{config.repository_path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT attempt, state, exit_code, detail, ran_with FROM attempts"
            " WHERE job_id = ? ORDER BY attempt",
            (job_id,),
        ).fetchall()
        (requirements,) = conn.execute(
            "SELECT requirements FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    finally:
        conn.close()
    first, second = rows
    assert first[:3] == (1, "failed", 1)
    assert first[3] == f"out of memory: an allocation failed under its limit of {200 * MIB} bytes"
    assert json.loads(first[4]) == {"memory": 200 * MIB}
    assert second[:2] == (2, "succeeded")
    assert json.loads(second[4]) == {"memory": 400 * MIB}
    assert json.loads(requirements)["memory"] == 400 * MIB
