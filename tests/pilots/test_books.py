"""The engine's books of pilots through the console (engine/console/ops_pilots.py,
engine/pilots/books.py, engine/repository/pilots.py), and the Slurm output parsers
(engine/pilots/slurm.py). A real engine with no agent, its console on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.cli.client import Client, ClientError, connect
from wfe.engine.config import load_config
from wfe.engine.console.api import serve_api
from wfe.engine.console.tokens import digest, new_secret
from wfe.engine.keys import create_secrets, read_token
from wfe.engine.pilots.slurm import QUEUED, RUNNING, parse_scontrol, parse_squeue
from wfe.engine.pilots.submitter import BatchState
from wfe.engine.runtime.daemon import Engine, open_engine

CONFIG = """\
[api]
host = "127.0.0.1"
port = 0

[agents]
local = 0
"""


@pytest.fixture
async def consoles(tmp_path: Path) -> AsyncIterator[tuple[Client, Client, Engine]]:
    """An operator's and a viewer's connections to an engine that has no agent, and the
    engine."""
    (tmp_path / "wfe.toml").write_text(CONFIG)
    config = load_config(tmp_path / "wfe.toml")
    create_secrets(config)
    with trio.fail_after(60):
        async with open_engine(config) as engine, trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_api(
                    engine, host="127.0.0.1", port=0, token=read_token(config),
                    task_status=task_status,
                )
            )  # fmt: skip
            tokens = {}
            for role in ("operator", "viewer"):
                tokens[role] = new_secret()
                await engine.create_token(role, role, digest(tokens[role]), by="test")
            url = f"ws://127.0.0.1:{port}/"
            async with connect(url, tokens["operator"]) as op, connect(url, tokens["viewer"]) as v:
                yield op, v, engine
            nursery.cancel_scope.cancel()


async def refused(client: Client, op: str, **args: object) -> ClientError:
    with pytest.raises(ClientError) as info:
        await client.call(op, **args)
    return info.value


async def test_a_pilots_record_follows_its_batch_job_once(
    consoles: tuple[Client, Client, Engine],
) -> None:
    """A pilot is recorded submitting, then pending with its batch id, running, ended; each
    change is an event; a change out of turn (submitted twice, ended twice, an unknown
    pilot) is refused not_found and changes nothing."""
    op, viewer, _ = consoles
    made = await op.call(
        "pilots.create",
        system="slurm",
        agent="pilot-1@wfe.localhost",
        requirements={"cpus": 2, "tags": ["gpu"]},
        resources={"cpus": 2, "walltime": 600},
    )
    pid = made["id"]
    assert (made["state"], made["factory"], made["requirements"]) == (
        "submitting",
        "operator",
        {"cpus": 2, "tags": ["gpu"]},
    )
    assert (await op.call("pilots.submitted", id=pid, batch_id="42"))["state"] == "pending"
    assert (await refused(op, "pilots.submitted", id=pid, batch_id="43")).code == "not_found"
    assert (await op.call("pilots.started", id=pid))["state"] == "running"
    ended = await op.call(
        "pilots.ended", id=pid, end_state="TIMEOUT", exit_code=None, reason="wall time"
    )
    assert (ended["state"], ended["end_state"], ended["reason"]) == (
        "ended",
        "TIMEOUT",
        "wall time",
    )
    again = await refused(op, "pilots.ended", id=pid, end_state="COMPLETED")
    assert again.code == "not_found" and str(again) == f"no pilot {pid!r} is live"
    assert (await refused(op, "pilots.started", id="pilot-999999")).code == "not_found"
    [row] = await viewer.call("pilots.list")
    assert (row["batch_id"], row["end_state"]) == ("42", "TIMEOUT")
    assert await viewer.call("pilots.list", live=True) == []
    events = await viewer.call("events", limit=100)
    kinds = [e["kind"] for e in events if e["subject"] == f"pilot:{pid}"]
    assert kinds == ["pilot.created", "pilot.submitted", "pilot.started", "pilot.ended"]


@pytest.mark.parametrize(
    ("op", "args", "message"),
    [
        ("pilots.create", {"system": "Slurm!", "agent": "a@b", "requirements": {},
                           "resources": {}}, "system 'Slurm!': expected a lower-case name"),
        ("pilots.create", {"system": "slurm", "agent": "a b", "requirements": {},
                           "resources": {}}, "agent 'a b': expected an agent name"),
        ("pilots.create", {"system": "slurm", "agent": "a@b", "requirements": {"gpus": 1},
                           "resources": {}}, "requirements.gpus: unknown"),
        ("pilots.submitted", {"id": "pilot-000001", "batch_id": "1; rm"},
         "batch_id '1; rm': expected a batch system's job id"),
        ("pilots.ended", {"id": "pilot-000001", "end_state": "done"},
         "end_state 'done': expected a state such as COMPLETED"),
    ],
)  # fmt: skip
async def test_bad_pilot_records_are_refused_in_one_line(
    consoles: tuple[Client, Client, Engine], op: str, args: dict[str, object], message: str
) -> None:
    """A bad field is refused bad_request naming it, and nothing is recorded."""
    operator, viewer, _ = consoles
    error = await refused(operator, op, **args)
    assert error.code == "bad_request" and str(error).startswith(message), str(error)
    assert await viewer.call("pilots.list") == []


async def test_a_viewer_reads_demand_but_records_no_pilot(
    consoles: tuple[Client, Client, Engine],
) -> None:
    """The demand of an engine with nothing queued is empty; a viewer may read it and the
    pilots, but creating one is forbidden."""
    _, viewer, _ = consoles
    assert await viewer.call("pilots.demand") == {"needs": [], "agents": [], "holding": []}
    error = await refused(
        viewer, "pilots.create", system="slurm", agent="a@b", requirements={}, resources={}
    )
    assert error.code == "forbidden"


async def test_queued_jobs_are_demand_by_their_requirements(
    consoles: tuple[Client, Client, Engine],
) -> None:
    """Jobs queued with no agent are demand, grouped by their requirements, largest first;
    with no agent at all every one is unplaceable too."""
    op, _, engine = consoles
    for _ in range(3):
        await engine.run_rscript("sleep_echo", {}, requires={"memory": 1 << 30})
    await engine.run_rscript("sleep_echo", {})
    demand = await op.call("pilots.demand")
    assert demand["needs"] == [
        {"requirements": {"cpus": 1, "memory": 1 << 30}, "queued": 3, "unplaceable": 3},
        {"requirements": {"cpus": 1}, "queued": 1, "unplaceable": 1},
    ]


states = st.sampled_from(sorted(QUEUED | RUNNING) + ["COMPLETED", "CANCELLED", "TIMEOUT"])


@given(st.lists(st.tuples(st.integers(1, 10**7).map(str), states), max_size=5))
def test_squeue_lines_are_read_back(pairs: list[tuple[str, str]]) -> None:
    """What `squeue --format=%i|%T` prints is read back as (job id, state) pairs."""
    text = "".join(f"{job}|{state}\n" for job, state in pairs)
    assert parse_squeue(text) == pairs


@given(
    states,
    st.integers(0, 255),
    st.integers(0, 64),
    st.sampled_from(["None", "NonZeroExitCode", "TimeLimit"]),
)
def test_scontrol_gives_the_end_state_exit_code_and_reason(
    state: str, code: int, signal: int, reason: str
) -> None:
    """`scontrol --oneliner show job` is read as queued, running, or ended with Slurm's
    state, the exit code, and the reason (with the signal, when one killed it)."""
    line = (
        f"JobId=7 JobName=pilot-000001 UserId=root(0) JobState={state} Reason={reason}"
        f" Dependency=(null) ExitCode={code}:{signal} RunTime=00:00:01\n"
    )
    status = parse_scontrol(line)
    if state in QUEUED:
        assert status.state is BatchState.QUEUED
    elif state in RUNNING:
        assert status.state is BatchState.RUNNING
    else:
        assert (status.state, status.end_state, status.exit_code) == (
            BatchState.ENDED,
            state,
            code,
        )
        words = [] if reason == "None" else [reason]
        words += [f"signal {signal}"] if signal else []
        assert status.reason == ", ".join(words)
