"""``/metrics``, ``/healthz`` and ``/readyz`` on the console's port, for monitoring.

No token is needed and nothing is given away but the figures below: names, ids, parameters
and output never appear. They are served where the console listens (loopback by default).

* ``/healthz``: 200 ``ok`` while the process answers.
* ``/readyz``: 200 ``ready`` when the repository is writable (``Repository.writable``: its
  disk is not refusing writes) and takes a write within ``READY_WRITE_TIMEOUT`` seconds, and
  the local agents' socket is there; else 503 with one line per failed check.
* ``/metrics``: the Prometheus text format, made by ``prometheus_client`` (its registry and
  ``generate_latest``). Each scrape reads what the engine keeps anyway (controller,
  repository and console statistics), runs two grouped counts on the repository (jobs by kind
  and state, ended attempts by outcome) and the newest event id, and yields the histograms
  recorded as things happen (``wfe.engine.runtime.metrics``).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wfe.engine.console import web
from wfe.engine.repository import Missed
from wfe.engine.repository.jobs import TableCounts

if TYPE_CHECKING:
    from wfe.engine.console.server import ConsoleServer

READY_WRITE_TIMEOUT = 2.0  # seconds a write may take before the repository counts as not ready
PATHS = ("/metrics", "/healthz", "/readyz")


class ConsoleMetrics:
    """Answers the monitoring paths for one console server."""

    def __init__(self, server: ConsoleServer) -> None:
        self.server = server

    @staticmethod
    def serves(head: web.HttpHead) -> bool:
        return head.method in ("GET", "HEAD") and urlsplit(head.target).path in PATHS

    async def answer(self, head: web.HttpHead) -> bytes:
        """The response to a GET (or HEAD) of one of ``PATHS``."""
        path = urlsplit(head.target).path
        only = head.method == "HEAD"
        if path == "/healthz":
            return web.response(200, "OK", b"ok\n", head_only=only)
        if path == "/readyz":
            problems = await self.not_ready()
            if problems:
                body = "".join(f"{p}\n" for p in problems).encode()
                return web.response(503, "Service Unavailable", body, head_only=only)
            return web.response(200, "OK", b"ready\n", head_only=only)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(self.server, await self.server.engine.table_counts()))
        return web.response(200, "OK", generate_latest(registry), CONTENT_TYPE_LATEST,
                            head_only=only)  # fmt: skip

    async def not_ready(self) -> list[str]:
        """What keeps the engine from being ready: one line per failed check, none if ready."""
        engine = self.server.engine
        problems = []
        trouble = engine.repository_trouble
        if trouble is not None:  # said without the path: this page needs no token
            why = "the disk is full" if trouble.full else "the disk refuses writes"
            problems.append(f"repository: not writable: {why}; new work is refused")
        elif not engine.repository_writable:
            problems.append("repository: not writable: the writer has stopped")
        else:
            with trio.move_on_after(READY_WRITE_TIMEOUT) as waiting:
                try:
                    await engine.flush()
                except Exception as exc:  # RepositoryError, RepositoryClosed: said, not raised
                    problems.append(f"repository: not writable: {type(exc).__name__}")
            if waiting.cancelled_caught:
                problems.append(
                    f"repository: not writable: no commit within {READY_WRITE_TIMEOUT:g} s"
                )
        sock = engine.config.run_dir / "agents.sock"
        try:
            is_socket = stat.S_ISSOCK(sock.stat().st_mode)
        except OSError:
            is_socket = False
        if not is_socket:
            problems.append("local agents: their socket is not being served")
        for transport in sorted(engine.transports_down):
            problems.append(f"{transport}: the engine is not connected to its server")
        return problems

    async def run(self) -> None:
        """Observe the repository's commit latency on each committed batch, until cancelled."""
        import time

        engine = self.server.engine
        _, commit = engine.latency_histograms()
        last_at = None
        async with engine.subscribe(max_buffer=10_000) as events:
            async for event in events:
                if isinstance(event, Missed) or event.at == last_at:
                    continue  # a gap, or the same transaction as the event before
                last_at = event.at
                # wall-clock: events carry wall time
                commit.observe(max(0.0, time.time() - event.at))  # wall-clock


class _Snapshot(Collector):
    """Yields the families of one scrape from what was read for it."""

    def __init__(self, server: ConsoleServer, counts: TableCounts) -> None:
        self.server = server
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        engine = self.server.engine
        controller = engine.dispatch_statistics()
        repo = engine.repository_statistics()
        dispatch_to_result, commit = engine.latency_histograms()
        console = self.server.statistics()

        jobs = GaugeMetricFamily("wfe_jobs", "Jobs in the repository by kind and state",
                                 labels=["kind", "state"])  # fmt: skip
        for kind, state, count in self.counts.jobs:
            jobs.add_metric([kind, state], count)
        yield jobs
        ended = CounterMetricFamily("wfe_attempts_ended", "Attempts ended, by outcome (their state)",
                                    labels=["outcome"])  # fmt: skip
        for state, count in self.counts.attempts:
            ended.add_metric([state], count)
        yield ended
        yield from dispatch_to_result.collect()
        yield GaugeMetricFamily("wfe_queue_depth", "RScript jobs waiting for an agent",
                                value=controller["queued"])  # fmt: skip
        yield GaugeMetricFamily("wfe_unplaceable_jobs",
                                "Queued RScript jobs that no connected agent can ever take",
                                value=controller["unplaceable"])  # fmt: skip
        yield GaugeMetricFamily("wfe_attempts_running", "RScript jobs on an agent",
                                value=controller["running"])  # fmt: skip
        yield CounterMetricFamily("wfe_dispatched", "Attempts dispatched since the engine started",
                                  value=controller["dispatched_total"])  # fmt: skip
        agents = GaugeMetricFamily("wfe_agents", "Agents known to the engine, by state",
                                   labels=["state"])  # fmt: skip
        by_state = {"connected": 0, "disconnected": 0, "lost": 0}
        for agent in engine.agents():
            state = str(agent["state"])
            by_state[state] = by_state.get(state, 0) + 1
        for state, count in sorted(by_state.items()):
            agents.add_metric([state], count)
        yield agents
        yield CounterMetricFamily("wfe_events_committed", "Events committed to the repository",
                                  value=self.counts.events)  # fmt: skip
        yield CounterMetricFamily("wfe_repository_commits", "Transactions committed since start",
                                  value=repo.commits)  # fmt: skip
        yield GaugeMetricFamily("wfe_repository_write_queue_depth", "Writes waiting for the writer",
                                value=repo.queue_depth)  # fmt: skip
        yield from commit.collect()
        connections = GaugeMetricFamily("wfe_console_connections",
                                        "Sockets open on the console's port",
                                        labels=["state"])  # fmt: skip
        connections.add_metric(["authenticated"], console["sockets"] - console["unauthenticated"])
        connections.add_metric(["unauthenticated"], console["unauthenticated"])
        yield connections
        refused = CounterMetricFamily("wfe_console_refused", "Console connections refused or closed",
                                      labels=["reason"])  # fmt: skip
        for reason, count in sorted(console["refused"].items()):
            refused.add_metric([reason], count)
        yield refused
