"""What a chaos run must not break, judged from outside the engine (``python -m bench.chaos``).

Inputs, all independent of the engine's own account of itself:

* the **executions log**: each workload script appends ``START job attempt pid t n`` when it
  starts and ``END job attempt pid t n code`` just before it exits (``t`` is
  ``time.monotonic()``, the same clock as the harness);
* what the harness **watched**: when each script process was last seen alive, and for each
  agent the intervals it was cut off from the engine (engine down, agent dead, Prosody down);
* the **repository file**, read directly with sqlite3 after the engine has stopped;
* the events the console served while the run went on (each must still be there, unchanged).

``judge(...)`` returns a :class:`Verdict`: figures and one :class:`Violation` per broken
invariant. Nothing here starts a process; the functions are pure apart from reading files.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
SCRIPT = "chaos_work"


@attrs.define
class Execution:
    """One run of the workload script, as its START/END lines and the pid watcher saw it."""

    job: str
    attempt: int
    pid: int
    n: int
    start: float
    end: float | None = None  # the END line's time; None: it never wrote one (killed)
    code: int | None = None  # the exit status it announced on its END line
    last_alive: float = -math.inf  # last time the watcher saw its process
    gone: float | None = None  # first time the watcher saw it gone

    @property
    def alive_until(self) -> float:
        """The latest time it is known to have been running."""
        return self.end if self.end is not None else max(self.start, self.last_alive)

    @property
    def stopped_by(self) -> float:
        """The earliest time it is known to have stopped (inf while never seen gone)."""
        if self.end is not None:
            return self.end
        return self.gone if self.gone is not None else math.inf


@attrs.frozen
class Violation:
    kind: str
    subject: str
    detail: str

    def line(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


@attrs.define
class Verdict:
    figures: dict[str, Any] = attrs.Factory(dict)
    violations: list[Violation] = attrs.Factory(list)

    def add(self, kind: str, subject: str, detail: str) -> None:
        self.violations.append(Violation(kind, subject, detail))

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for v in self.violations:
            counts[v.kind] += 1
        return dict(sorted(counts.items()))


def parse_log(text: str) -> list[Execution]:
    """The executions in an executions log; a torn last line is ignored.

    Raises ``ValueError`` naming the line for an END without its START.
    """
    runs: dict[tuple[str, int, int], Execution] = {}
    order: list[Execution] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if len(fields) < 6 or fields[0] not in ("START", "END"):
            continue  # a torn line: the writer was killed mid-write
        what, job, attempt, pid, t, n = fields[:6]
        key = (job, int(attempt), int(pid))
        if what == "START":
            run = Execution(job=job, attempt=int(attempt), pid=int(pid), n=int(n), start=float(t))
            runs[key] = run
            order.append(run)
        else:
            if key not in runs:
                raise ValueError(f"executions log line {number}: END without START: {line!r}")
            runs[key].end = float(t)
            runs[key].code = int(fields[6]) if len(fields) > 6 else None
    return order


def expected_output(n: int, lines: int) -> bytes:
    """What the workload script with ``n`` and ``lines`` prints on stdout."""
    return "".join(f"chaos {n} line {k}\n" for k in range(lines)).encode()


def longest_cutoff(intervals: Iterable[tuple[float, float]], start: float, until: float) -> float:
    """The longest of ``intervals`` (start, end) that overlaps [start, until]."""
    return max((e - s for s, e in intervals if s <= until and e >= start), default=0.0)


def merge_cutoffs(
    seen: Sequence[tuple[float, float]],
    changes: Sequence[tuple[float, str]],
    *,
    reconnect: float = 60.0,
) -> list[tuple[float, float]]:
    """One agent's cut-offs: what the harness saw, stretched by what the engine recorded.

    ``seen``: intervals the agent could not reach the engine (engine down, agent dead, Prosody
    down). ``changes``: the agent's ``agent.state`` events, (time, state), in order. An interval
    lasts until the engine next recorded the agent connected (if within ``reconnect`` s: its
    reconnect backoff counts too); a disconnected or lost record opens one until the next
    connected. Overlapping intervals are merged.
    """
    connects = [t for t, state in changes if state == "connected"]
    stretched = []
    for start, end in seen:
        back = next((t for t in connects if t >= end), math.inf)
        stretched.append((start, back if back - end <= reconnect else end))
    opened: float | None = None
    for t, state in changes:
        if state == "connected" and opened is not None:
            stretched.append((opened, t))
            opened = None
        elif state != "connected" and opened is None:
            opened = t
    if opened is not None:
        stretched.append((opened, math.inf))
    merged: list[tuple[float, float]] = []
    for start, end in sorted(stretched):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def agent_changes(db: Path, offset: float) -> dict[str, list[tuple[float, str]]]:
    """Each agent's recorded states, (time, state), with ``offset`` (wall - monotonic) taken off."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT at, subject, data FROM events WHERE kind = 'agent.state' ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    changes: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for at, subject, data in rows:
        changes[subject].append((at - offset, str(json.loads(data).get("state"))))
    return dict(changes)


def judge_executions(
    verdict: Verdict,
    executions: Sequence[Execution],
    agents: Mapping[tuple[str, int], str],
    cutoffs: Mapping[str, Sequence[tuple[float, float]]],
    *,
    lease: float,
    slack: float,
) -> None:
    """No two executions of a job at once; a second one only after a cut-off longer than the lease.

    ``agents`` maps (job, attempt) to the agent the repository says ran it; a cut-off of
    ``lease - slack`` or more counts (reconnecting adds to what the harness measured).
    """
    by_job: dict[str, list[Execution]] = defaultdict(list)
    for run in executions:
        by_job[run.job].append(run)
    duplicates = justified = 0
    for job, runs in by_job.items():
        runs.sort(key=lambda r: r.start)
        if len(runs) > 1:
            duplicates += 1
        fair = True
        for i, later in enumerate(runs[1:], 1):
            for earlier in runs[:i]:
                if later.start < earlier.alive_until:
                    fair = False
                    verdict.add(
                        "overlap",
                        job,
                        f"attempt {later.attempt} (pid {later.pid}) started"
                        f" {earlier.alive_until - later.start:.1f} s before attempt"
                        f" {earlier.attempt} (pid {earlier.pid}) last ran",
                    )
            earlier = runs[i - 1]
            agent = agents.get((job, earlier.attempt), "?")
            cut = longest_cutoff(cutoffs.get(agent, ()), earlier.start, later.start)
            if cut < lease - slack:
                fair = False
                verdict.add(
                    "rerun_without_fence",
                    job,
                    f"attempt {later.attempt} ran after attempt {earlier.attempt} on {agent},"
                    f" whose longest cut-off meanwhile was {cut:.1f} s (lease {lease:g} s)",
                )
        if len(runs) > 1 and fair:
            justified += 1
    verdict.figures.update(
        executions=len(executions),
        jobs_executed=len(by_job),
        duplicates=duplicates,
        duplicates_after_lease=justified,
        extra_executions=len(executions) - len(by_job),
    )


def read_books(db: Path) -> dict[str, Any]:
    """Jobs, attempts, output and event checks of a repository file (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        jobs = {
            row[0]: {"state": row[1], "params": json.loads(row[2]), "error": row[3]}
            for row in conn.execute(
                "SELECT id, state, params, error FROM jobs WHERE kind = 'rscript' AND name = ?",
                (SCRIPT,),
            )
        }
        attempts = {
            (row[0], row[1]): {"state": row[2], "agent": row[3], "exit_code": row[4]}
            for row in conn.execute("SELECT job_id, attempt, state, agent, exit_code FROM attempts")
            if row[0] in jobs
        }
        output: dict[tuple[str, int], bytes] = defaultdict(bytes)
        for job_id, attempt, data in conn.execute(
            "SELECT job_id, attempt, data FROM output WHERE stream = 'stdout'"
            " ORDER BY job_id, attempt, seq"
        ):
            output[(job_id, attempt)] += bytes(data)
        low, high, count = conn.execute("SELECT min(id), max(id), count(*) FROM events").fetchone()
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        return {
            "jobs": jobs,
            "attempts": attempts,
            "output": dict(output),
            "events": (low, high, count),
            "integrity": integrity,
        }
    finally:
        conn.close()


def events_kept(db: Path, seen: Mapping[int, tuple[str, str, Any]]) -> list[int]:
    """Ids of events the console served that the repository no longer holds unchanged."""
    if not seen:
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored = {
            row[0]: (row[1], row[2], json.loads(row[3]))
            for row in conn.execute(
                "SELECT id, kind, subject, data FROM events WHERE id <= ?", (max(seen),)
            )
        }
    finally:
        conn.close()
    return sorted(i for i, event in seen.items() if stored.get(i) != event)


def judge_books(
    verdict: Verdict,
    books: Mapping[str, Any],
    executions: Sequence[Execution],
    confirmed: Mapping[int, str],
) -> None:
    """Every job ended, its state agrees with what its scripts did, output is whole, no event lost."""
    jobs: dict[str, Any] = books["jobs"]
    states: dict[str, int] = defaultdict(int)
    for job_id, job in jobs.items():
        states[job["state"]] += 1
        if job["state"] not in TERMINAL:
            verdict.add("stuck", job_id, f"still {job['state']} after the drain")
    verdict.figures.update(jobs=len(jobs), states=dict(sorted(states.items())))
    by_n = {job["params"].get("n"): job_id for job_id, job in jobs.items()}
    for n, how in sorted(confirmed.items()):
        if n not in by_n:
            verdict.add("lost_submission", f"n={n}", f"the engine answered {how} but has no job")
    exits: dict[str, list[int | None]] = defaultdict(list)
    for run in executions:
        exits[run.job].append(run.code)
    for job_id, job in jobs.items():
        codes = exits.get(job_id, [])
        if job["state"] == "failed" and 0 in codes:
            verdict.add("failed_but_exit_0", job_id, f"recorded failed: {job['error']}")
        if job["state"] == "succeeded":
            if 0 not in codes:
                verdict.add("succeeded_without_exit_0", job_id, f"its scripts ended with {codes}")
            won = [
                a
                for (j, a), row in books["attempts"].items()
                if j == job_id and row["state"] == "succeeded"
            ]
            params = job["params"]
            want = expected_output(params["n"], params["lines"])
            for attempt in won:
                got = books["output"].get((job_id, attempt), b"")
                if got != want:
                    verdict.add(
                        "output_missing",
                        job_id,
                        f"attempt {attempt} stored {len(got)} of {len(want)} bytes of stdout"
                        + ("" if want.startswith(got) else " (different text)"),
                    )
    low, high, count = books["events"]
    if count and (low != 1 or high - low + 1 != count):
        verdict.add("events_gap", "events", f"ids {low}..{high} but {count} rows")
    if books["integrity"] != ["ok"]:
        verdict.add("integrity", "repository", "; ".join(books["integrity"][:3]))


def judge_orphans(verdict: Verdict, alive: Sequence[Execution], when: str) -> None:
    """Every script process still alive at ``when`` is an orphan."""
    for run in alive:
        verdict.add("orphan", run.job, f"pid {run.pid} (attempt {run.attempt}) still alive {when}")
