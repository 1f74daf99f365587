"""`wfe simulate` end to end through a real engine (a `wfe engine` process, SQLite, a local
agent): the DAQ example's 10-STF run in fast mode, `--until`, RScripts in a simulation,
concurrent simulation tasks, and bad input refused in one line with nothing recorded."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wfe.engine.cli.demo import make_workspace

pytestmark = pytest.mark.slow

DAQ = Path(__file__).resolve().parents[3] / "examples" / "daq"
FAST = DAQ / "fast_processing_default.toml"

# workflows.calls: an RScript run for real in a simulation, declared to take 30 simulated
# seconds; two tasks of its own and a child action sleeping side by side
CALLS = {
    "workflows/calls/10_calls.py": """
async def main(ctx, params):
    before = ctx.now
    script = await ctx.rscript("sleep_echo", {"message": "ran", "seconds": 0.3}, simulated=30)
    await ctx.publish("called", {"before": before, "after": ctx.now, "exit": script.exit_code})

    async def ticker(name, step, count):
        for _ in range(count):
            await ctx.sleep(step)
            await ctx.publish("tick", {"name": name, "time": ctx.now})

    ctx.start_soon(ticker, "a", 3, 3)
    ctx.start_soon(ticker, "b", 2, 4)
    child = await ctx.action("sim.child", step=5)
    await ctx.publish("joined", {"time": ctx.now, "child": child})
""",
    "sim/child/10_child.py": """
async def main(ctx, params):
    await ctx.sleep(params["step"])
    await ctx.publish("tick", {"name": "child", "time": ctx.now})
    return ctx.now
""",
}


def wfe(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wfe", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def workspace(tmp: Path) -> Path:
    """A workspace with one local agent and the DAQ example's actions (and the test's)."""
    extra = tmp / "actions"
    for name, text in CALLS.items():
        (extra / name).parent.mkdir(parents=True, exist_ok=True)
        (extra / name).write_text(text)
    config = make_workspace(tmp / "ws", agents=1)
    path = config.root / "wfe.toml"
    text = path.read_text().replace(
        "[engine]\n", f"[engine]\nactions = [{str(DAQ / 'actions')!r}, {str(extra)!r}]\n", 1
    )
    path.write_text(text)
    return path


@contextlib.contextmanager
def running(path: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `wfe engine` process on the workspace, stopped with SIGTERM at the end."""
    port = path.parent / "run" / "api.port"
    port.unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "wfe", "engine", "--config", str(path)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            for _ in range(300):
                if port.exists():
                    break
                assert process.poll() is None, log_path.read_text()
                subprocess.run(["sleep", "0.1"], check=True)
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running engine on a workspace of this module's tests."""
    tmp = tmp_path_factory.mktemp("simulate")
    path = workspace(tmp)
    with running(path, tmp / "engine.log"):
        yield path


def status(config: Path, eid: str) -> dict[str, Any]:
    done = wfe(config, "status", eid, "--json")
    assert done.returncode == 0, done.stderr
    detail: dict[str, Any] = json.loads(done.stdout)
    return detail


def broadcasts(detail: dict[str, Any]) -> list[tuple[float, str, dict[str, Any]]]:
    return [
        (e["data"]["sim_time"], e["data"]["topic"], e["data"]["message"])
        for e in detail["story"]
        if e["kind"].startswith("broadcast.")
    ]


#: What the DAQ workflow itself broadcasts (its reactors broadcast tf_slice, stf_processed).
DAQ_TOPICS = ("run_imminent", "start_run", "stf_gen", "pause_run", "resume_run", "end_run")


def daq(detail: dict[str, Any]) -> list[tuple[float, str, dict[str, Any]]]:
    return [b for b in broadcasts(detail) if b[1] in DAQ_TOPICS]


def test_the_daq_example_runs_ten_stfs_in_fast_mode(engine: Path) -> None:
    """`wfe simulate fast_processing_default.toml` exits 0 naming a workflow-user-NNNN id;
    `wfe status` of it shows the whole broadcast sequence in order with simulation times,
    the state changes, and the stored figures."""
    done = wfe(engine, "simulate", str(FAST), "--user", "alice")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert re.fullmatch(r"stf_datataking-alice-\d{4}: workflows\.stf_datataking \(fast\)", first)
    eid = first.split(":")[0]
    assert "end_run" in done.stdout and "completed" in done.stdout  # the story was printed

    detail = status(engine, eid)
    assert (detail["state"], detail["mode"], detail["namespace"]) == (
        "completed",
        "fast",
        "epic-daq",
    )
    assert daq(detail)[:2] == [
        (5.0, "run_imminent", daq(detail)[0][2]),
        (13.0, "start_run", daq(detail)[1][2]),
    ]
    sequence = [(sim, topic) for sim, topic, _ in daq(detail)]
    assert sequence == [
        (5.0, "run_imminent"),
        (13.0, "start_run"),
        *[(14.0 + 2 * i, "stf_gen") for i in range(10)],
        (34.0, "end_run"),
    ]
    stfs = [m for _, topic, m in daq(detail) if topic == "stf_gen"]
    number = int(eid.rsplit("-", 1)[1])
    assert [m["sequence"] for m in stfs] == list(range(1, 11))
    assert all(m["execution_id"] == eid and m["run_id"] == number for m in stfs)
    assert stfs[0]["filename"] == f"swf.{number:06d}.000001.stf"
    states = [
        (e["data"]["sim_time"], e["data"]["state"], e["data"]["substate"])
        for e in detail["story"]
        if e["kind"] == "execution.state"
    ]
    assert states == [
        (0, "no_beam", "not_ready"),
        (5, "beam", "not_ready"),
        (11, "beam", "ready"),
        (13, "run", "physics"),
        (34, "beam", "not_ready"),
    ]
    assert [e["kind"] for e in detail["story"]][0 :: len(detail["story"]) - 1] == [
        "execution.started",
        "execution.ended",
    ]
    # the fast-monitoring reactor ([reactors] stf_gen = "daq.fastmon") samples STF 1 of 10 at
    # 5%: 15 TF slices announced when it came (14 s), processed for 30 s, so the execution,
    # which ends after its reactions, lasts 44 s
    slices = [
        (sim, m["slice"], m["sequence"]) for sim, t, m in broadcasts(detail) if t == "tf_slice"
    ]
    assert slices == [(14.0, index, 1) for index in range(15)]
    figures = detail["figures"]
    assert figures["simulated_seconds"] == 44
    assert figures["messages"] == {
        "end_run": 1, "run_imminent": 1, "start_run": 1, "stf_gen": 10, "tf_slice": 15,
    }  # fmt: skip
    assert figures["states"] == {
        "no_beam/not_ready": 5,
        "beam/not_ready": 16,  # 6 before the run, and from end_run until the reactions end
        "beam/ready": 2,
        "run/physics": 21,
    }
    assert figures["metrics"] == {"stfs": 10, "physics_periods": 1, "run_id": number}
    assert figures["wall_seconds"] > 0 and figures["ratio"] == pytest.approx(
        44 / figures["wall_seconds"], rel=1e-2
    )

    again = wfe(engine, "simulate", str(FAST), "--user", "alice", "--json", "-p", "stf_count=2")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["id"] == f"stf_datataking-alice-{number + 1:04d}"


def test_until_stops_the_simulation_at_that_time(engine: Path) -> None:
    """--until 20 stops the run at simulation time 20: STFs up to 20, no end_run; it
    completed (it ran as long as asked), with 20 simulated seconds."""
    done = wfe(engine, "simulate", str(FAST), "--until", "20", "--json")
    assert done.returncode == 0, done.stderr
    detail = json.loads(done.stdout)
    assert detail["state"] == "completed" and detail["until"] == 20
    assert [(sim, topic) for sim, topic, _ in daq(detail)] == [
        (5, "run_imminent"),
        (13, "start_run"),
        (14, "stf_gen"),
        (16, "stf_gen"),
        (18, "stf_gen"),
        (20, "stf_gen"),
    ]
    assert detail["figures"]["simulated_seconds"] == 20


def test_overlay_and_parameters_reach_the_workflow(engine: Path) -> None:
    """--overlay testbed.toml sets the namespace and stf_count 5; -p over both."""
    done = wfe(engine, "simulate", str(FAST), "--overlay", str(DAQ / "testbed.toml"), "--json")
    detail = json.loads(done.stdout)
    assert detail["namespace"] == "your-namespace"
    assert detail["figures"]["messages"]["stf_gen"] == 5
    done = wfe(
        engine, "simulate", str(FAST), "--overlay", str(DAQ / "testbed.toml"), "-p", "stf_count=3",
        "-p", "stf_interval=0.5", "--json",
    )  # fmt: skip
    detail = json.loads(done.stdout)
    assert detail["params"] == {"stf_count": 3, "stf_interval": 0.5}
    assert [s for s, t, _ in daq(detail) if t == "stf_gen"] == [14, 14.5, 15]


def test_rscripts_run_for_real_and_tasks_share_the_virtual_clock(
    engine: Path, tmp_path: Path
) -> None:
    """In fast mode an RScript runs for real on an agent and the call takes exactly its
    declared simulated seconds; tasks started with ctx.start_soon and a child action sleep
    side by side on the execution's clock, their messages in simulation-time order."""
    definition = tmp_path / "calls.toml"
    definition.write_text(
        '[workflow]\nname = "calls"\nnamespace = "sim"\n\n'
        '[[stages]]\nname = "unused"\naction = "sim.child"\n'
    )
    done = wfe(engine, "simulate", str(definition), "--json")
    assert done.returncode == 0, done.stderr
    detail = json.loads(done.stdout)
    sent = broadcasts(detail)
    assert sent[0] == (30, "called", {"before": 0, "after": 30, "exit": 0})
    ticks = [(sim, m["name"]) for sim, topic, m in sent if topic == "tick"]
    assert ticks == sorted(ticks, key=lambda t: t[0])
    assert ticks == [
        (32, "b"), (33, "a"), (34, "b"), (35, "child"), (36, "a"), (36, "b"), (38, "b"), (39, "a"),
    ]  # fmt: skip
    topics = [(sim, topic) for sim, topic, _ in sent]
    assert topics.index((35, "joined")) == topics.index((35, "tick")) + 1  # right after the child
    assert [m for _, topic, m in sent if topic == "joined"] == [{"time": 35, "child": 35}]
    assert detail["figures"]["simulated_seconds"] == 39
    # the script really ran, as a child job of the workflow's
    tree = json.loads(wfe(engine, "status", detail["job"], "--json").stdout)["tree"]
    assert "sleep_echo" in json.dumps(tree)


def test_bad_input_is_refused_in_one_line_and_records_nothing(engine: Path, tmp_path: Path) -> None:
    """An unknown workflow action, a malformed or unknown -p, a value of the wrong type and
    --until <= 0 each fail with one line naming the problem; no execution is recorded."""
    nameless = DAQ / "daq_state_machine.toml"  # its workflow daq_state_machine has no code
    cases = [
        ((str(nameless),), "unknown workflow action 'workflows.daq_state_machine'"),
        ((str(FAST), "-p", "stf_count"), "bad --param 'stf_count': expected NAME=VALUE"),
        ((str(FAST), "-p", "stf_cont=3"), "unknown parameter 'stf_cont'"),
        ((str(FAST), "-p", "stf_count=x"), "parameter 'stf_count': 'x' is not an integer"),
        ((str(FAST), "--until", "0"), "--until 0: expected a positive number of seconds"),
        ((str(FAST), "--until", "-5"), "--until -5: expected a positive number of seconds"),
    ]
    for args, message in cases:
        done = wfe(engine, "simulate", *args, "--user", "bad")
        assert done.returncode == 1, (args, done.stdout)
        assert done.stderr.count("\n") == 1 and message in done.stderr, (args, done.stderr)
    for workflow in ("daq_state_machine", "stf_datataking"):
        missing = wfe(engine, "status", f"{workflow}-bad-0001")
        assert missing.returncode == 1 and "no request" in missing.stderr


def test_real_time_mode_runs_the_same_workflow(engine: Path, tmp_path: Path) -> None:
    """--realtime runs the same workflow on the wall clock (here with short delays and, by an
    overlay, short slice processing: 2 s of simulation); it completes with the same story
    (no wall time asserted)."""
    overlay = tmp_path / "testbed.toml"
    overlay.write_text(
        '[testbed]\nnamespace = "rt"\n\n[fast_processing]\nslice_processing_time = 0.6\n'
    )
    short = [
        f"{k}=0.2"
        for k in (
            "no_beam_not_ready_delay",
            "beam_not_ready_delay",
            "beam_ready_delay",
            "beam_not_ready_end_delay",
            "broadcast_delay",
            "stf_interval",
        )
    ]
    args = [a for pair in short for a in ("-p", pair)]
    done = wfe(
        engine, "simulate", str(FAST), "--realtime", "--overlay", str(overlay),
        "-p", "stf_count=3", *args, "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    detail = json.loads(done.stdout)
    assert (detail["mode"], detail["state"]) == ("realtime", "completed")
    topics = [topic for _, topic, _ in daq(detail)]
    assert topics == ["run_imminent", "start_run", "stf_gen", "stf_gen", "stf_gen", "end_run"]
    sims = [sim for sim, _, _ in daq(detail)]
    assert sims == pytest.approx([0.2, 0.8, 1.0, 1.2, 1.4, 1.6])
    # the workflow ends at 2; STF 1's slices, processed from 1.0 for 0.6 s, before that
    assert detail["figures"]["simulated_seconds"] == pytest.approx(2.0)


def test_an_execution_cut_off_by_an_engine_stop_fails_at_the_next_start(tmp_path: Path) -> None:
    """An engine killed (SIGKILL) during a real-time simulation: at its next start the
    execution fails with one line saying why, and its job with it; nothing is replayed."""
    path = workspace(tmp_path)
    log = tmp_path / "engine.log"
    with running(path, log) as process:
        with subprocess.Popen(
            [sys.executable, "-m", "wfe", "simulate", str(FAST), "--realtime", "--user", "k",
             "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as follow:  # fmt: skip
            assert follow.stdout is not None
            eid = follow.stdout.readline().split(":")[0]
            assert eid == "stf_datataking-k-0001"
            process.kill()
            process.wait(timeout=20)
            _, err = follow.communicate(timeout=60)
            assert follow.returncode == 1 and "the engine closed the connection" in err
    with running(path, log):
        detail = status(path, eid)
        assert detail["state"] == "failed"
        assert detail["error"] == "the engine stopped during the simulation; run it again"
        job = json.loads(wfe(path, "status", detail["job"], "--json").stdout)
        assert (job["state"], job["error"]) == ("failed", detail["error"])
        assert [e["kind"] for e in detail["story"]][-1] == "execution.ended"


def test_the_same_broadcasts_drive_stf_processing_in_the_other_configuration(
    engine: Path,
) -> None:
    """stf_processing_default.toml runs the same workflow with another reactor: every STF is
    processed whole (``daq.process_stf``), announced as stf_processed 5 simulated seconds
    after its stf_gen, with its file; no TF slices are made."""
    done = wfe(engine, "simulate", str(DAQ / "stf_processing_default.toml"), "-p", "stf_count=3", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    sent = broadcasts(json.loads(done.stdout))
    made = {m["filename"]: sim for sim, topic, m in sent if topic == "stf_gen"}
    processed = {m["filename"]: (sim, m) for sim, topic, m in sent if topic == "stf_processed"}
    assert len(made) == 3 and sorted(processed) == sorted(made)
    for filename, (sim, message) in processed.items():
        assert sim == made[filename] + 5
        assert (message["began"], message["ended"]) == (made[filename], sim)
    assert not [topic for _, topic, _ in sent if topic == "tf_slice"]


def test_killing_the_workflow_job_cancels_the_execution(engine: Path) -> None:
    """`wfe kill` of a real-time execution's job cancels it: the follower exits 1 naming
    the state, the execution is cancelled with its figures so far, no end_run was sent."""
    with subprocess.Popen(
        [sys.executable, "-m", "wfe", "simulate", str(FAST), "--realtime", "--user", "kill",
         "--config", str(engine)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as follow:  # fmt: skip
        assert follow.stdout is not None
        eid = follow.stdout.readline().split(":")[0]
        job = status(engine, eid)["job"]
        killed = wfe(engine, "kill", job)
        assert killed.returncode == 0, killed.stderr
        _, err = follow.communicate(timeout=60)
    assert follow.returncode == 1 and f"{eid} cancelled: killed" in err
    detail = status(engine, eid)
    assert detail["state"] == "cancelled" and detail["figures"]["simulated_seconds"] < 40
    assert "end_run" not in [topic for _, topic, _ in broadcasts(detail)]


def test_the_story_is_printed_as_it_is_recorded_then_the_figures(engine: Path) -> None:
    """Without --json, `wfe simulate` prints the id, then one line per event of the story
    (simulation time, event, detail) up to its end, then the summary with the figures."""
    done = wfe(engine, "simulate", str(FAST), "-p", "stf_count=2", "--user", "story")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    eid = lines[0].split(":")[0]
    story = [line.split()[:3] for line in lines[1:] if re.match(r"\s+[\d.]+  ", line)]
    assert story[0] == ["0", "execution.started"] and story[-1] == [
        "44",
        "execution.ended",
        "completed",
    ]
    sent = [
        (sim, topic)
        for sim, kind, topic in (s for s in story if len(s) == 3)
        if kind == "broadcast"
    ]
    assert [s for s in sent if s[1] != "tf_slice"] == [
        ("5", "run_imminent"), ("13", "start_run"), ("14", "stf_gen"), ("16", "stf_gen"),
        ("18", "end_run"),
    ]  # fmt: skip
    summary = lines[len(story) + 1 :]
    assert summary[0].startswith(f"{eid}  completed  (fast;")
    assert any(line.startswith("  simulated 44 s in ") for line in summary)


#: Real-time runs of a few seconds: every delay 0.3 s (the first one 1 s, to watch it start).
SHORT = [
    a
    for k in ("beam_not_ready_delay", "beam_ready_delay", "beam_not_ready_end_delay",
              "broadcast_delay", "stf_interval")
    for a in ("-p", f"{k}=0.3")
]  # fmt: skip


def test_status_watch_follows_a_running_execution_to_its_end(engine: Path, tmp_path: Path) -> None:
    """`wfe status ID --watch` on a running (real-time) execution prints its story as it is
    recorded, from its start, and returns once it has ended."""
    overlay = tmp_path / "testbed.toml"
    overlay.write_text(
        '[testbed]\nnamespace = "w"\n\n[fast_processing]\nslice_processing_time = 0.5\n'
    )
    with subprocess.Popen(
        [sys.executable, "-m", "wfe", "simulate", str(FAST), "--realtime", "--quiet",
         "--overlay", str(overlay), "-p", "stf_count=1", "-p", "no_beam_not_ready_delay=1", *SHORT,
         "--user", "watch", "--config", str(engine)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as follow:  # fmt: skip
        assert follow.stdout is not None
        eid = follow.stdout.readline().split(":")[0]
        watched = wfe(engine, "status", eid, "--watch")
        follow.communicate(timeout=60)
    assert watched.returncode == 0, watched.stderr
    kinds = [
        line.split()[1] for line in watched.stdout.splitlines() if re.match(r"\s+[\d.]+  ", line)
    ]
    assert kinds[0] == "execution.started" and kinds[-1] == "execution.ended"
    assert f"{eid}  completed  (realtime" in watched.stdout
