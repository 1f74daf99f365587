"""The chaos run's plan: options, the fault schedule and the workload, from the seed alone.

``plan_faults`` and ``plan_jobs`` are pure functions of :class:`Options` (``tests/chaos``
checks that), so a seed names one run's schedule. ``WORKLOAD`` is the RScript every job runs
(see docs/reliability.md).
"""

from __future__ import annotations

import random

import attrs

KINDS = ("engine", "local", "xmpp", "prosody", "disk")

WORKLOAD = """\
#!/usr/bin/env python3
# wfe-rscript: 1
# name: chaos_work
# version: 1.0
# interpreter: python3
# description: chaos workload: notes its start and end outside the engine, prints known lines
# timeout: 600
# param n: int (required) the submission number
# param seconds: float = 1.0 how long it runs
# param lines: int = 4 lines printed, spread over the run
# param code: int = 0 its exit status
# param quiet: bool = false print every line at the start, then only sleep
# param log: path (required) the executions log
# requires: cpus=1

import json, os, sys, time

with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
    p = json.load(f)


def note(what, extra=""):
    line = "%s %s %s %d %.6f %d%s\\n" % (
        what, os.environ["WFE_JOB_ID"], os.environ["WFE_ATTEMPT"], os.getpid(),
        time.monotonic(), p["n"], extra,
    )
    fd = os.open(p["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


note("START")
for k in range(p["lines"]):
    print("chaos %d line %d" % (p["n"], k), flush=True)
    if not p["quiet"]:
        time.sleep(p["seconds"] / p["lines"])
if p["quiet"]:  # like most real jobs: a script that writes nothing more lives on without its agent
    time.sleep(p["seconds"])
note("END", " %d" % p["code"])
sys.exit(p["code"])
"""


@attrs.frozen(kw_only=True)
class Options:
    minutes: float = 5.0  # how long faults are injected and jobs submitted
    seed: int = 1
    faults: tuple[str, ...] = ("engine", "local", "xmpp", "prosody")
    lease: float = 60.0  # [agents] lease written to wfe.toml (when the engine knows it)
    slack: float = 1.0  # a cut-off of lease - slack or more justifies a second execution
    local: int = 2
    xmpp: int = 2
    rate: float = 1.0  # jobs submitted per second
    job_seconds: float = 6.0  # longest job
    gap: tuple[float, float] = (4.0, 16.0)  # seconds between two faults (shortest, longest)
    engine_down: float = 60.0
    xmpp_down: float = 60.0
    never: float = 0.2  # chance an XMPP agent killed does not come back
    prosody_down: float = 15.0
    disk_hold: float = 20.0
    disk_mb: int = 64
    drain: float = 240.0  # seconds the jobs have to end once every fault is undone
    root: str = ""  # keep the run here (default: a temporary directory, removed if all held)


@attrs.frozen
class Fault:
    at: float  # seconds after the start of the fault phase
    kind: str
    target: str
    down: float | None  # seconds until it is undone; None: never (an XMPP agent)


@attrs.frozen
class Job:
    at: float
    n: int
    seconds: float
    lines: int
    code: int
    quiet: bool


def plan_faults(options: Options) -> list[Fault]:
    """The fault schedule: a pure function of the options (the seed above all)."""
    rng = random.Random(f"faults-{options.seed}")
    faults: list[Fault] = []
    nevers = 0
    t = rng.uniform(*options.gap) / 2
    while t < options.minutes * 60 and options.faults:
        kind = rng.choice(sorted(options.faults))
        down: float | None
        if kind == "engine":
            target, down = "engine", rng.uniform(0, options.engine_down)
        elif kind == "local":
            target, down = f"local-{rng.randint(1, options.local)}", 0.0
        elif kind == "xmpp":
            target = f"agent{rng.randint(1, options.xmpp)}"
            down = rng.uniform(0, options.xmpp_down)
            if rng.random() < options.never and nevers < options.xmpp - 1:
                down, nevers = None, nevers + 1
        elif kind == "prosody":
            target, down = "prosody", rng.uniform(0, options.prosody_down)
        else:
            target, down = "disk", rng.uniform(2, options.disk_hold)
        faults.append(Fault(round(t, 3), kind, target, None if down is None else round(down, 3)))
        t += rng.uniform(*options.gap)
    return faults


def plan_jobs(options: Options) -> list[Job]:
    """The workload: when each job is submitted, how long it runs, what it prints and exits with."""
    rng = random.Random(f"jobs-{options.seed}")
    jobs, t, n = [], 0.0, 0
    while t < options.minutes * 60:
        n += 1
        code = 3 if rng.random() < 0.05 else 0
        seconds = round(rng.uniform(0.3, options.job_seconds), 3)
        jobs.append(Job(round(t, 3), n, seconds, rng.randint(1, 8), code, rng.random() < 0.5))
        t += rng.expovariate(options.rate)
    return jobs
