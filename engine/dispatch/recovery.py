"""Read what an engine restart must pick up: unfinished RScript jobs and known agents."""

from __future__ import annotations

import json
from typing import Any

from wfe.engine.runtime.jobs import JOB_COLUMNS, JobRow, job_from_row
from wfe.protocols.messages import Capabilities


def load_unfinished(
    conn: Any,
) -> tuple[list[tuple[JobRow, dict[str, Any] | None]], dict[str, Capabilities]]:
    """Return every unfinished RScript job with a summary of its attempts, and the agents
    not known to be lost. Runs on a read connection."""
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE kind = 'rscript'"
        " AND state NOT IN ('succeeded', 'failed', 'cancelled') ORDER BY id"
    ).fetchall()
    jobs: list[tuple[JobRow, dict[str, Any] | None]] = []
    for row in rows:
        job = job_from_row(row)
        summary = conn.execute(
            "SELECT MAX(attempt), SUM(state IN ('failed', 'timed_out')), SUM(state = 'lost')"
            " FROM attempts WHERE job_id = ?",
            (job.id,),
        ).fetchone()
        attempt: dict[str, Any] | None = None
        if summary[0] is not None:
            last = conn.execute(
                "SELECT state, agent FROM attempts WHERE job_id = ? AND attempt = ?",
                (job.id, summary[0]),
            ).fetchone()
            attempt = {
                "attempt": summary[0],
                "failures": summary[1] or 0,
                "lost": summary[2] or 0,
                "state": last[0],
                "agent": last[1],
            }
        jobs.append((job, attempt))
    agents: dict[str, Capabilities] = {}
    for name, caps in conn.execute("SELECT name, capabilities FROM agents WHERE state != 'lost'"):
        data = json.loads(caps)
        try:
            agents[name] = Capabilities(
                slots=int(data.get("slots", 1)),
                memory=data.get("memory"),
                site=data.get("site", "local"),
                tags=tuple(data.get("tags", ())),
                storage=tuple(data.get("storage", ())),
            )
        except (TypeError, ValueError):
            continue
    return jobs, agents


def agent_transports(conn: Any) -> dict[str, str]:
    """The transport each known agent last connected over (``local``, ``xmpp``)."""
    return {
        name: transport for name, transport in conn.execute("SELECT name, transport FROM agents")
    }
