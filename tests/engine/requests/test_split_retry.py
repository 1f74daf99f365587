"""Retries that halve a job's inputs (``on_retry = { max_inputs = "/2" }``).

Pure parts first (no trio): the split of a batch (hypothesis: no input lost or doubled, the
sizes ``ceil(n / N)`` and the rest) and the controller's policy deciding it. Then the whole
thing for real: an engine, a local agent whose keeper limits the job's address space, and
an RScript that runs out of memory when given more than two inputs.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.definitions.on_retry import inputs_kept
from wfe.engine.dispatch import locality
from wfe.engine.dispatch.policy import AttemptEnd, Failed, RetryAt, decide_end
from wfe.engine.requests.split import inputs_of, kept_locality, kept_params, split_batch
from wfe.protocols.attempt import AttemptState

from .conftest import HEAD, PATIENCE, open_world

END = AttemptEnd(
    attempt=1,
    state=AttemptState.FAILED,
    max_attempts=3,
    backoff=1.0,
    timeout=30.0,
    exit_code=1,
    detail="out of memory: an allocation failed under its limit of 1024 bytes",
    requirements={"memory": 1024},
    on_retry={"max_inputs": "/2"},
    inputs=8,
    now=10.0,
)


@given(
    st.lists(st.text(min_size=1, max_size=4), min_size=2, max_size=64, unique=True),
    st.integers(min_value=2, max_value=9),
)
def test_a_split_loses_and_doubles_no_input(keys: list[str], divisor: int) -> None:
    """Cut by the rule's arithmetic, the job keeps the first ceil(n / N) inputs in order and
    the others are released: together exactly the batch, none in both; its params keep the
    same first inputs."""
    keep = inputs_kept({"max_inputs": f"/{divisor}"}, len(keys))
    assert keep == math.ceil(len(keys) / divisor)
    cut = split_batch(keys, keep)
    assert list(cut.kept) + list(cut.released) == keys
    assert not set(cut.kept) & set(cut.released)
    assert len(cut.kept) == keep and len(cut.released) == len(keys) - keep
    params = {"x": 1, "inputs": [{"path": k} for k in keys]}
    kept = kept_params(params, keep)
    assert [i["path"] for i in kept["inputs"]] == list(cut.kept)
    assert kept["x"] == 1 and inputs_of(kept) == keep
    assert inputs_of(params) == len(keys)  # not changed in place


@pytest.mark.parametrize("keep", [0, 3, 4])
def test_a_split_that_keeps_nothing_or_everything_is_refused(keep: int) -> None:
    """Keeping no input, or all of them, is no split: refused in one line."""
    with pytest.raises(ValueError, match=f"cannot keep {keep} of 3 inputs: nothing to split"):
        split_batch(["a", "b", "c"], keep)


def test_params_without_inputs_cannot_be_cut() -> None:
    """A job that is no stage's (no inputs list) is refused in one line."""
    with pytest.raises(ValueError, match="the job's params have no inputs list to split"):
        kept_params({"x": 1}, 1)
    assert inputs_of({"x": 1}) == 0


def test_a_split_job_reads_and_records_the_replicas_of_the_inputs_it_keeps() -> None:
    """The locality requirement cut to the kept inputs: an agent at a site is given the
    chosen replicas of exactly those inputs, and the attempt records only theirs; the sites
    that reach the job stay those of the whole batch."""
    replicas = [[("CERN", f"root://cern/{i}"), ("FNAL", f"root://fnal/{i}")] for i in range(4)]
    sites = {"cern": {"CERN": 0, "FNAL": 60}, "fnal": {"FNAL": 0}}
    names = [f"/data/f{i}" for i in range(4)]
    placed = locality.placement(replicas, sites, None, names)
    assert placed is not None
    kept = kept_locality(placed, 2)
    params = kept_params({"inputs": [{"path": n, "metadata": {}} for n in names]}, 2)
    given = locality.with_replicas(params, kept, "fnal")["inputs"]
    assert [(i["path"], i["rse"], i["location"]) for i in given] == [
        ("/data/f0", "FNAL", "root://fnal/0"),
        ("/data/f1", "FNAL", "root://fnal/1"),
    ]
    assert locality.used(kept, "cern") == [["CERN", "root://cern/0"], ["CERN", "root://cern/1"]]
    assert kept["names"] == names[:2] and len(kept["replicas"]) == 2
    assert sorted(kept["sites"]) == sorted(placed["sites"])
    assert len(placed["sites"]["cern"]["pick"]) == 4  # not changed in place


def test_an_out_of_memory_end_halves_the_inputs() -> None:
    """After an out-of-memory end with retries left, the retry keeps 4 of 8 inputs (rounded
    up: 3 of 5, 1 of 2), and the reason says so."""
    decided = decide_end(END)
    assert isinstance(decided, RetryAt)
    assert decided.inputs == 4 and decided.requirements is None
    assert decided.reason.endswith("; inputs 8 -> 4")
    assert decide_end(attrs.evolve(END, inputs=5)).inputs == 3  # type: ignore[union-attr]
    assert decide_end(attrs.evolve(END, inputs=2)).inputs == 1  # type: ignore[union-attr]


def test_a_timeout_splits_too_and_memory_grows_with_it() -> None:
    """A timed-out attempt splits as well; with a memory rule too, both change."""
    end = attrs.evolve(
        END,
        state=AttemptState.TIMED_OUT,
        exit_code=None,
        detail="",
        on_retry={"memory": "x2", "max_inputs": "/3"},
        inputs=7,
    )
    decided = decide_end(end)
    assert isinstance(decided, RetryAt)
    assert decided.inputs == 3
    assert decided.requirements == {"memory": 2048}
    assert decided.reason == "attempt 1 timed out after 30 s; memory 1024 -> 2048; inputs 7 -> 3"


def test_a_job_of_one_input_or_an_ordinary_failure_is_not_split() -> None:
    """One input is retried unchanged; a failure that is neither out of memory nor a timeout
    is retried unchanged; with no retries left the job fails, nothing split."""
    assert decide_end(attrs.evolve(END, inputs=1)).inputs is None  # type: ignore[union-attr]
    plain = decide_end(attrs.evolve(END, detail="boom"))
    assert isinstance(plain, RetryAt) and plain.inputs is None
    assert decide_end(attrs.evolve(END, failures=2)) == Failed(
        reason="attempt 1 ran out of memory: an allocation failed under its limit of 1024 bytes"
    )


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=2, max_value=5))
def test_halving_again_and_again_ends_with_jobs_of_one_input(n: int, divisor: int) -> None:
    """Splitting a batch and every part again while each keeps running out of memory
    partitions the inputs into jobs of one input, each input in exactly one of them."""
    pending = [list(range(n))]
    done: list[list[int]] = []
    while pending:
        batch = pending.pop()
        keep = inputs_kept({"max_inputs": f"/{divisor}"}, len(batch))
        if keep is None:
            done.append(batch)
            continue
        cut = split_batch([str(i) for i in batch], keep)
        pending += [[int(k) for k in cut.kept], [int(k) for k in cut.released]]
    assert sorted(i for b in done for i in b) == list(range(n))
    assert all(len(b) == 1 for b in done)


# --- for real ------------------------------------------------------------------------------

K = 2  # the most inputs SQUEEZE can take under its memory limit
SQUEEZE = """#!/usr/bin/env python3
# wfe-rscript: 1
# name: squeeze
# version: 1.0
# interpreter: python3
# description: maps 200 MiB per input (more than 2 inputs overflow 600M); notes each input it processed
# param inputs: list = [] [{"path": ..., "metadata": {...}}, ...]
# param output_dir: path where to write the products
# param ledger: str a file outside the engine: one line per input processed
# param gate: str = "" a file: a job it can take waits until it exists
# requires: cpus=1
import hashlib, json, mmap, os, time
from pathlib import Path
params = json.load(open(os.environ["WFE_PARAMS"]))
inputs = params["inputs"]
while params["gate"] and len(inputs) <= 2 and not os.path.exists(params["gate"]):
    time.sleep(0.05)  # the test opens the gate
# Address space only (no page is touched): past RLIMIT_AS this fails with ENOMEM,
# "Cannot allocate memory" at the end of stderr, which the agent reports as out of memory.
space = mmap.mmap(-1, len(inputs) * (200 << 20))
out = Path(params["output_dir"])
out.mkdir(parents=True, exist_ok=True)
products = []
for item in inputs:
    target = out / (Path(item["path"]).name + ".out")
    target.write_text("squeezed\\n")
    data = target.read_bytes()
    products.append({"path": str(target), "type": "science", "size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "metadata": {}})
with open(params["ledger"], "a") as ledger:
    ledger.write("".join(item["path"] + "\\n" for item in inputs))
Path(os.environ["WFE_RESULT"]).write_text(json.dumps({"products": products}))
"""

SPLITTING = (
    HEAD
    + """
[params.ledger]
type = "str"

[params.gate]
type = "str"
default = ""

[[stages]]
name = "s"
rscript = "squeeze"
consumes = "query"
max_inputs = 8
retries = 3
requires = { memory = "600M" }
on_retry = { max_inputs = "/2" }
params = { ledger = "${ledger}", gate = "${gate}" }
"""
)


@pytest.mark.slow
async def test_a_batch_too_big_for_memory_is_halved_until_every_input_is_processed_once(
    tmp_path: Path,
) -> None:
    """8 inputs in one batch of a script that runs out of memory with more than 2: each
    out-of-memory attempt halves its job's inputs, the others are batched again; every
    input is processed exactly once (the script's own ledger), every split is an event,
    every attempt records how many inputs it ran with (failed ones more than 2, the
    successful ones at most 2), and `wfe request` / `wfe status JOB` show it."""
    ledger = tmp_path / "ledger.txt"
    async with open_world(tmp_path, slots=2) as world:
        names = [f"f{i}.raw" for i in range(8)]
        await world.catalog(names)
        path = world.definition(SPLITTING)
        (path.parent / "rscripts" / "squeeze.py").write_text(SQUEEZE)
        rid = (await world.submit(path, ledger=str(ledger)))["id"]
        done = await world.wait(rid)
        assert done["state"] == "completed", done
        detail = await world.detail(rid)
        code, shown, _ = await world.wfe("request", rid)
        assert code == 0
        first = detail["jobs"][0]["job"]
        code, status, _ = await world.wfe("status", first)
        assert code == 0
    processed = Counter(Path(line).name for line in ledger.read_text().splitlines())
    assert processed == Counter(names)  # each input exactly once, outside the engine's books
    assert detail["stages"][0]["inputs"] == {"processed": 8}
    splits = [h for h in detail["history"] if h["kind"] == "request.split"]
    assert splits, detail["history"]
    for split in splits:
        n = len(split["kept"]) + len(split["released"])
        assert n > K and len(split["kept"]) == math.ceil(n / 2)
        assert f"inputs {n} -> {len(split['kept'])}" in split["reason"]
        assert "ran out of memory" in split["reason"]
    conn = sqlite3.connect(f"file:{world.config.repository_path}?mode=ro", uri=True)
    try:
        attempts = conn.execute(
            "SELECT a.state, a.detail, a.ran_with, j.params FROM attempts a"
            " JOIN jobs j ON j.id = a.job_id ORDER BY a.job_id, a.attempt"
        ).fetchall()
        batches = conn.execute("SELECT job, inputs, outcome FROM stage_batches").fetchall()
    finally:
        conn.close()
    for state, detail_text, ran_with, params in attempts:
        ran = json.loads(ran_with)["inputs"]
        if state == "failed":
            assert ran > K and detail_text.startswith("out of memory"), detail_text
        else:
            assert state == "succeeded" and ran <= K
            assert len(json.loads(params)["inputs"]) == ran  # the job keeps what it ran
    assert len(splits) == sum(1 for a in attempts if a[0] == "failed")
    batch_inputs = [k for _, keys, outcome in batches for k in json.loads(keys)]
    assert all(outcome == "processed" for *_, outcome in batches)
    assert sorted(batch_inputs) == sorted(set(batch_inputs)) and len(batch_inputs) == 8
    assert shown.count("split: job ") == len(splits)
    assert f"split: job {first} (s, batch " in shown and "keeps 4 input(s), 4 back" in shown
    assert "RAN WITH" in status and "inputs=8" in status and "inputs=2" in status


@pytest.mark.slow
async def test_a_split_is_kept_across_an_engine_restart(tmp_path: Path) -> None:
    """Two splits committed (8 -> 4 and 4 -> 2), both jobs waiting out a long backoff and a
    job of 2 inputs held at a gate when the engine stops; after the restart the first job
    runs its kept 4 inputs (not 8), and every input is still processed exactly once."""
    ledger = tmp_path / "ledger.txt"
    gate = tmp_path / "gate"
    async with open_world(tmp_path, slots=2, backoff=PATIENCE * 2) as world:
        await world.catalog([f"f{i}.raw" for i in range(8)])
        path = world.definition(SPLITTING)
        (path.parent / "rscripts" / "squeeze.py").write_text(SQUEEZE)
        rid = (await world.submit(path, ledger=str(ledger), gate=str(gate)))["id"]

        async def two_splits_and_a_gated_job() -> Any:
            detail = await world.detail(rid)
            splits = [h for h in detail["history"] if h["kind"] == "request.split"]
            running = [j for j in detail["jobs"] if j["state"] == "running"]
            return len(splits) == 2 and len(running) == 1 and detail

        before = await world.until("two splits", two_splits_and_a_gated_job)
        first = before["jobs"][0]["job"]
    toml = tmp_path / "ws" / "wfe.toml"
    toml.write_text(toml.read_text().replace(f"backoff = {PATIENCE * 2}", "backoff = 0.1"))
    gate.write_text("open\n")
    async with open_world(tmp_path, slots=2) as world:
        assert (await world.wait(rid))["state"] == "completed"
        job = await world.call("status", job=first)
    ran = [(a["state"], a["ran_with"]["inputs"]) for a in job["attempt_list"]]
    assert ran == [("failed", 8), ("failed", 4), ("succeeded", 2)], ran
    processed = Counter(Path(line).name for line in ledger.read_text().splitlines())
    assert processed == Counter(f"f{i}.raw" for i in range(8))
