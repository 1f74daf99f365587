"""The chaos run's judge (bench.chaos_checks) and schedule (bench.chaos): pure, no process started.

A judge that cannot fail proves nothing, so each invariant is shown failing on a made-up run
that breaks it, and passing on one that keeps it.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bench.chaos_checks import (
    Execution,
    Verdict,
    events_kept,
    expected_output,
    judge_books,
    judge_executions,
    judge_orphans,
    merge_cutoffs,
    parse_log,
    read_books,
)
from bench.chaos_plan import Options, plan_faults, plan_jobs


def run(job: str, attempt: int, start: float, end: float | None, *, pid: int = 100) -> Execution:
    code = None if end is None else 0
    return Execution(job=job, attempt=attempt, pid=pid, n=1, start=start, end=end, code=code)


def kinds(verdict: Verdict) -> list[str]:
    return [v.kind for v in verdict.violations]


# --- the executions log ---------------------------------------------------------------------

executions = st.lists(
    st.tuples(
        st.integers(1, 5),  # job
        st.integers(1, 3),  # attempt
        st.floats(0, 1e6, allow_nan=False),
        st.one_of(st.none(), st.integers(0, 255)),  # END code, None: killed
    ),
    max_size=20,
    unique_by=lambda t: (t[0], t[1]),
)


@given(executions, st.text(alphabet="STAR 0123j", max_size=12))
def test_log_round_trip(runs: list[tuple[int, int, float, int | None]], torn: str) -> None:
    """What the workload writes is read back whole, whatever a killed writer left at the end."""
    lines = [f"START j{j} {a} {1000 + i} {t:.6f} {j}" for i, (j, a, t, _) in enumerate(runs)]
    lines += [
        f"END j{j} {a} {1000 + i} {t + 1:.6f} {j} {code}"
        for i, (j, a, t, code) in enumerate(runs)
        if code is not None
    ]
    parsed = parse_log("\n".join(lines) + "\n" + torn.replace("\n", ""))
    assert [(r.job, r.attempt, r.code) for r in parsed] == [
        (f"j{j}", a, code) for j, a, _, code in runs
    ]
    for r, (_, _, t, code) in zip(parsed, runs, strict=True):
        assert r.start == float(f"{t:.6f}")
        assert (r.end is None) == (code is None)


def test_end_without_start_is_named() -> None:
    """An END line with no START before it is an error naming the line."""
    try:
        parse_log("END j1 1 5 1.0 1 0\n")
    except ValueError as exc:
        assert "line 1: END without START" in str(exc)
    else:
        raise AssertionError("accepted an END without START")


# --- executions against the lease -----------------------------------------------------------


def test_one_execution_per_job_is_clean() -> None:
    """Jobs that ran once break nothing."""
    verdict = Verdict()
    judge_executions(verdict, [run("j1", 1, 0, 5), run("j2", 1, 1, 2)], {}, {}, lease=10, slack=1)
    assert verdict.violations == []
    assert verdict.figures["duplicates"] == 0 and verdict.figures["executions"] == 2


def test_overlapping_executions_are_found() -> None:
    """A second execution that starts while the first still ran is an overlap."""
    first = run("j1", 1, 0, None)
    first.last_alive = 30.0  # the watcher saw it alive until 30 s; killed after
    second = run("j1", 2, 20, 25, pid=101)
    verdict = Verdict()
    cut = {"a1": [(1.0, 19.0)]}
    judge_executions(verdict, [first, second], {("j1", 1): "a1"}, cut, lease=10, slack=0)
    assert kinds(verdict) == ["overlap"]
    assert "10.0 s before attempt 1" in verdict.violations[0].detail


def test_rerun_needs_a_cutoff_longer_than_the_lease() -> None:
    """A second execution is fair only after its agent was cut off for lease - slack or more."""
    first, second = run("j1", 1, 0, None), run("j1", 2, 40, 45, pid=101)
    first.gone = first.last_alive = 20.0
    agents = {("j1", 1): "a1"}
    short, long_ = {"a1": [(5.0, 12.0)]}, {"a1": [(5.0, 18.5)]}
    unfair, fair = Verdict(), Verdict()
    judge_executions(unfair, [first, second], agents, short, lease=15, slack=2)
    judge_executions(fair, [first, second], agents, long_, lease=15, slack=2)
    assert kinds(unfair) == ["rerun_without_fence"]
    assert fair.violations == []
    assert fair.figures["duplicates"] == fair.figures["duplicates_after_lease"] == 1


def test_a_cutoff_outside_the_first_execution_does_not_count() -> None:
    """A long cut-off before the first execution began justifies nothing."""
    first, second = run("j1", 1, 100, 101), run("j1", 2, 140, 141, pid=101)
    verdict = Verdict()
    judge_executions(
        verdict, [first, second], {("j1", 1): "a1"}, {"a1": [(0, 90)]}, lease=15, slack=0
    )
    assert kinds(verdict) == ["rerun_without_fence"]


def test_never_back_is_an_endless_cutoff() -> None:
    """An agent that never came back was cut off long enough for any lease."""
    first, second = run("j1", 1, 0, None), run("j1", 2, 70, 71, pid=101)
    first.gone = first.last_alive = 1.0
    verdict = Verdict()
    cut = {"a1": [(0.5, math.inf)]}
    judge_executions(verdict, [first, second], {("j1", 1): "a1"}, cut, lease=60, slack=0)
    assert verdict.violations == []


def test_cutoffs_last_until_the_engine_records_the_agent_back() -> None:
    """A cut-off the harness saw lasts until the engine next recorded the agent connected (its
    reconnect backoff counts); a recorded disconnection opens one; overlaps are merged."""
    seen = [(10.0, 14.0), (100.0, 103.0)]
    changes = [(9.0, "connected"), (13.0, "disconnected"), (20.0, "connected")]
    changes += [(50.0, "lost"), (58.0, "connected")]
    assert merge_cutoffs(seen, changes) == [(10.0, 20.0), (50.0, 58.0), (100.0, 103.0)]
    assert merge_cutoffs([(0.0, 5.0)], [(500.0, "connected")], reconnect=60) == [(0.0, 5.0)]
    assert merge_cutoffs([], [(1.0, "lost")]) == [(1.0, math.inf)]


def test_orphans_are_named() -> None:
    """A script still alive once its job ended is an orphan, with its pid."""
    verdict = Verdict()
    judge_orphans(verdict, [run("j7", 2, 0, None, pid=4242)], "at the end")
    assert [v.line() for v in verdict.violations] == [
        "orphan: j7: pid 4242 (attempt 2) still alive at the end"
    ]


# --- the books ------------------------------------------------------------------------------


def make_db(path: Path, jobs: list[tuple[str, str, int]], events: list[int]) -> None:
    """A repository file with the tables the judge reads: (job, state, n) and event ids."""
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE jobs (id, kind, name, state, params, error);"
        "CREATE TABLE attempts (job_id, attempt, state, agent, exit_code);"
        "CREATE TABLE output (job_id, attempt, seq, stream, data);"
        "CREATE TABLE events (id INTEGER PRIMARY KEY, kind, subject, data);"
    )
    for job_id, state, n in jobs:
        params = json.dumps({"n": n, "lines": 2})
        conn.execute(
            "INSERT INTO jobs VALUES (?, 'rscript', 'chaos_work', ?, ?, ?)",
            (job_id, state, params, "boom" if state == "failed" else None),
        )
        conn.execute("INSERT INTO attempts VALUES (?, 1, ?, 'a1', 0)", (job_id, state))
    for i in events:
        conn.execute("INSERT INTO events VALUES (?, 'job.state', 'j1', '{\"state\": \"x\"}')", (i,))
    conn.commit()
    conn.close()


def test_books_that_agree_with_the_scripts_pass(tmp_path: Path) -> None:
    """Succeeded with its whole output, failed with a non-zero exit, events 1..n: nothing to say."""
    db = tmp_path / "wfe.db"
    make_db(db, [("j1", "succeeded", 1), ("j2", "failed", 2)], [1, 2, 3])
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO output VALUES ('j1', 1, 0, 'stdout', ?)", (expected_output(1, 2),))
    conn.commit()
    conn.close()
    failing = run("j2", 1, 0, 1)
    failing.code = 3
    verdict = Verdict()
    judge_books(verdict, read_books(db), [run("j1", 1, 0, 1), failing], {1: "j1", 2: "j2"})
    assert verdict.violations == []
    assert verdict.figures["states"] == {"failed": 1, "succeeded": 1}


def test_books_that_lie_are_caught(tmp_path: Path) -> None:
    """Each way the books can disagree with what ran is named: stuck, lost submission, failed
    though it exited 0, succeeded with output missing, a gap in the event ids."""
    db = tmp_path / "wfe.db"
    make_db(db, [("j1", "succeeded", 1), ("j2", "failed", 2), ("j3", "running", 3)], [1, 2, 4])
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO output VALUES ('j1', 1, 0, 'stdout', ?)", (b"chaos 1 line 0\n",))
    conn.commit()
    conn.close()
    verdict = Verdict()
    books = read_books(db)
    judge_books(verdict, books, [run("j1", 1, 0, 1), run("j2", 1, 0, 1)], {1: "j1", 9: "j9"})
    assert verdict.counts() == {
        "events_gap": 1,
        "failed_but_exit_0": 1,
        "lost_submission": 1,
        "output_missing": 1,
        "stuck": 1,
    }
    assert any("stored 15 of 30 bytes" in v.detail for v in verdict.violations)


def test_events_served_must_stay(tmp_path: Path) -> None:
    """An event the console served that is gone or changed in the repository is reported."""
    db = tmp_path / "wfe.db"
    make_db(db, [], [1, 2])
    seen = {
        1: ("job.state", "j1", {"state": "x"}),
        2: ("job.state", "j1", {"state": "y"}),
        3: ("job.state", "j1", {}),
    }
    assert events_kept(db, seen) == [2, 3]


# --- the schedule ---------------------------------------------------------------------------


@given(st.integers(0, 2**32), st.floats(0.5, 5))
def test_schedule_is_a_function_of_the_seed(seed: int, minutes: float) -> None:
    """The same seed gives the same faults and jobs; each fault is within its bounds."""
    options = Options(
        seed=seed, minutes=minutes, faults=("engine", "local", "xmpp", "prosody", "disk")
    )
    assert plan_faults(options) == plan_faults(options)
    assert plan_jobs(options) == plan_jobs(options)
    nevers = 0
    for fault in plan_faults(options):
        assert 0 <= fault.at < minutes * 60
        if fault.kind == "engine":
            assert fault.down is not None and 0 <= fault.down <= options.engine_down
        if fault.kind == "prosody":
            assert fault.down is not None and 0 <= fault.down <= options.prosody_down
        nevers += fault.down is None
    assert nevers <= options.xmpp - 1  # one XMPP agent always comes back


def test_different_seeds_give_different_schedules() -> None:
    """The seed matters."""
    a, b = Options(seed=1, minutes=3), Options(seed=2, minutes=3)
    assert plan_faults(a) != plan_faults(b)
    assert plan_jobs(a) != plan_jobs(b)
