"""A short chaos run (bench.chaos) against real processes: exactly once under real faults.

A real ``wfe engine`` with two local agents, two ``wfe agent --xmpp`` processes and a real
Prosody run a workload for about 100 s while the engine (down up to 8 s), the agents (XMPP ones
down up to 20 s) and Prosody (up to 8 s) are SIGKILLed on a fixed seed's schedule; then every fault is undone, the jobs drain,
and the run fails on any violation of issue 10's invariants (see docs/reliability.md).

The lease is short (12 s) so that re-dispatch after a lease fence happens within the run.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from bench.chaos import report, run_chaos
from bench.chaos_plan import Options

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.xmpp]

SHORT = Options(
    minutes=1.7,
    seed=20261207,
    faults=("engine", "local", "xmpp", "prosody"),
    lease=12.0,
    rate=2.0,  # about six jobs running at any time, so that each fault hits some
    engine_down=8.0,  # shorter than the lease: a job that runs again after one is a violation
    xmpp_down=20.0,  # some longer than the lease: their attempts are fenced and run again
    prosody_down=8.0,
    gap=(3.0, 10.0),
    drain=120.0,
)


async def test_short_chaos_run_breaks_nothing(tmp_path: Path) -> None:
    """Under SIGKILLs of the engine, local and XMPP agents and Prosody: every job ends, no event
    is lost, no job runs twice at once or again without a lease fence, no finished result is
    thrown away, output is whole, and no script outlives its job."""
    figures = await run_chaos(attrs.evolve(SHORT, root=str(tmp_path / "chaos")))
    text = "\n".join(report(figures))
    print(text)  # shown with -s or -rP: the figures of a run that held
    assert sum(figures["faults"].values()) >= 5, text  # the schedule did hit the cluster
    assert figures["jobs"] >= 50 and figures["executions"] >= figures["jobs"], text
    if figures["violations"] and not figures["lease_in_engine"]:
        pytest.xfail(f"this tree's engine has no [agents] lease (issue 10 not landed):\n{text}")
    assert figures["violations"] == {}, text
