"""The engine process: the root nursery and its long-lived services.

``open_engine`` starts, in order: the repository writer, the agent controller (dispatcher
and timers), recovery of unfinished jobs, the local agent socket and the local agents, and
the resumption of unfinished actions. It yields an ``Engine``, the facade the console API,
the CLI and the demo use. Leaving the context stops the local agents (they exit and leave
what they run to their keepers: a stop cancels nothing) and cancels the services;
unfinished jobs stay unfinished in the repository, and the next start picks them up exactly
as after a crash.
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio
from prometheus_client import Histogram

from wfe.engine.config import Config
from wfe.engine.dispatch.controller import AgentController
from wfe.engine.errors import EngineError
from wfe.engine.keys import load_signer
from wfe.engine.repository import (
    Event,
    Repository,
    RepositoryStatistics,
    Subscription,
    listing,
    open_repository,
    queries,
    reader,
    request_views,
    retention,
)
from wfe.engine.repository import catalog as catalog_rows
from wfe.engine.repository import jobs as job_rows
from wfe.engine.repository import products as product_rows
from wfe.engine.repository import requests as request_rows
from wfe.engine.repository import tokens as token_rows
from wfe.engine.repository.jobs import JobState
from wfe.engine.repository.retention import PurgeCount
from wfe.engine.repository.rowtypes import Conn, JsonObject
from wfe.engine.repository.space import DiskTrouble
from wfe.engine.requests import RequestService
from wfe.engine.requests import prepare as prepare_requests
from wfe.engine.runtime import metrics
from wfe.engine.runtime.actions import ActionRunner
from wfe.engine.runtime.jobs import Completions
from wfe.engine.runtime.tasklets import ActionLibrary
from wfe.engine.runtime.watchdog import BlockedReport, Watchdog
from wfe.engine.transports.local import LocalAgents, serve_local_agents, watch_local_agents
from wfe.rscripts.loader import ScriptLibrary

if TYPE_CHECKING:
    from wfe.protocols.messages import OutputChunk

log = logging.getLogger("wfe.engine")


class Engine:
    """What the outside world may ask of a running engine."""

    def __init__(
        self,
        *,
        config: Config,
        repo: Repository,
        runner: ActionRunner,
        controller: AgentController,
        watchdog: Watchdog,
        scripts: ScriptLibrary,
        requests: RequestService | None = None,
    ) -> None:
        self.config = config
        self.repo = repo
        self.runner = runner
        self.controller = controller
        self.watchdog = watchdog
        self.scripts = scripts
        self.requests = requests  # workflow requests (wfe.engine.requests); None in a bare engine

    async def run_action(self, name: str, params: dict[str, Any], *, by: str | None = None) -> str:
        """Start the root action ``name``; return its job id. Raises on an unknown action or
        bad parameters, before anything is recorded. ``by`` (who asked) goes into the
        ``job.created`` event."""
        return await self.runner.start(name, params, by=by)

    async def run_rscript(
        self, name: str, params: dict[str, Any], *, by: str | None = None, **options: Any
    ) -> str:
        """Queue an RScript job with no parent; return its job id (``by`` as for ``run_action``)."""
        return await self.controller.submit(name, params, by=by, **options)

    async def kill(self, job_id: str, *, by: str | None = None) -> str:
        """Cancel a job and its tree; return the state it was in. With ``by``, a
        ``job.kill_requested`` event naming who asked is committed first."""
        if by is None:
            return await self.runner.kill(job_id)
        job = await self.job(job_id)  # raises UnknownJob
        data = {"by": by, "state": job["state"]}
        await self.repo.write(lambda tx: tx.emit("job.kill_requested", job_id, data))
        return await self.runner.kill(job_id, reason=f"killed by {by}")

    async def wait(self, job_id: str) -> Any:
        return await self.runner.wait(job_id)

    # --- admission and health ----------------------------------------------------------------

    def admit_new_work(self) -> None:
        """Raise ``RepositoryFull`` while the disk refuses writes (new work would only queue
        behind the held ones); return at once otherwise."""
        self.repo.admit_new_work()

    @property
    def repository_trouble(self) -> DiskTrouble | None:
        """Why the repository's writes are held right now, or None when they commit."""
        return self.repo.trouble

    @property
    def repository_writable(self) -> bool:
        """Whether the repository's writes commit now."""
        return self.repo.writable

    async def flush(self) -> None:
        """Return once everything written before this call is committed (or has failed)."""
        await self.repo.flush()

    @property
    def transports_down(self) -> frozenset[str]:
        """The agent transports whose server the engine is not connected to right now."""
        return frozenset(self.controller.transports_down)

    def repository_statistics(self) -> RepositoryStatistics:
        return self.repo.statistics()

    def dispatch_statistics(self) -> dict[str, Any]:
        """The agent controller's counters (queued, running, unplaceable, dispatched...)."""
        return self.controller.statistics()

    def latency_histograms(self) -> tuple[Histogram, Histogram]:
        """``(dispatch to result, repository commit)``: the histograms /metrics exports."""
        dispatch = metrics.recorded(self.controller).dispatch_to_result
        return dispatch, metrics.recorded(self.repo).commit

    # --- jobs ------------------------------------------------------------------------------------

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self.repo.read(queries.job_detail(job_id))

    async def jobs(
        self, *, limit: int = 50, state: JobState | None = None, root_only: bool = False
    ) -> list[dict[str, Any]]:
        return await self.repo.read(queries.job_list(limit=limit, state=state, root_only=root_only))

    async def find_jobs(
        self,
        *,
        limit: int,
        states: tuple[JobState, ...] = (),
        name: str | None = None,
        since: float | None = None,
        root_only: bool = True,
    ) -> list[JsonObject]:
        """Jobs newest first, filtered (``listing.find_jobs``)."""
        return await self.repo.read(
            listing.find_jobs(
                limit=limit, states=states, name=name, since=since, root_only=root_only
            )
        )

    async def job_tree(self, job_id: str) -> JsonObject:
        """``job_id`` and its descendants, nested. Raises ``UnknownJob``."""
        return await self.repo.read(listing.job_tree(job_id))

    async def retry(self, job_id: str, *, by: str | None) -> dict[str, Any]:
        """Run a failed or cancelled root job again (``wfe.engine.runtime.retry``); new work,
        so refused while the disk is full."""
        from wfe.engine.runtime.retry import retry_job

        self.repo.admit_new_work()
        return await retry_job(self, job_id, by=by)

    async def purge(self, before: float, *, by: str | None, dry_run: bool = False) -> PurgeCount:
        """Delete (or with ``dry_run`` count) the output and events of jobs that ended
        before ``before`` (``wfe.engine.repository.retention``)."""
        if dry_run:
            return await self.repo.read(retention.count_purge(before))
        return await retention.purge_before(self.repo, before, by=by)

    async def output(self, job_id: str, *, attempt: int | None = None) -> bytes:
        return await self.repo.read(queries.job_output(job_id, attempt))

    async def output_page(
        self, job_id: str, attempt: int | None, offset: int, limit: int
    ) -> queries.OutputPage:
        """At most ``limit`` bytes of an attempt's stored output from ``offset``."""
        return await self.repo.read(queries.output_page(job_id, attempt, offset, limit))

    async def output_chunks(
        self, job_id: str, attempt: int, first_seq: int
    ) -> list[tuple[int, str, bytes]]:
        """Stored output chunks ``(seq, channel, data)`` of an attempt from ``first_seq``."""
        return await self.repo.read(queries.stored_chunks(job_id, attempt, first_seq))

    def watch_output(
        self, job_id: str, send: trio.MemorySendChannel[OutputChunk]
    ) -> Callable[[], None]:
        """Have live output chunks of ``job_id`` sent to ``send``; call the result to stop."""
        return self.controller.watch_output(job_id, send)

    def agents(self) -> list[JsonObject]:
        return queries.agent_table(self.controller)

    # --- events ----------------------------------------------------------------------------------

    async def events(
        self, *, after: int, limit: int, kind: str = "", subject: str | None = None
    ) -> list[Event]:
        """Committed events after ``after``, oldest first, by kind prefix and subject."""
        return await self.repo.read(
            reader.find_events(after=after, limit=limit, kind=kind, subject=subject)
        )

    async def last_event_id(self) -> int:
        """The newest committed event's id (0 when none)."""
        return await self.repo.read(reader.last_event_id)

    def subscribe(self, *, max_buffer: int = 1000) -> AbstractAsyncContextManager[Subscription]:
        """Stream events committed from now on (``Repository.subscribe``)."""
        return self.repo.subscribe(max_buffer=max_buffer)

    async def event_index_seed(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """``(request id, namespace)`` of recent requests and ``(job id, request id)`` of
        unfinished request jobs, read in one snapshot."""

        def fn(conn: Conn) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
            return request_rows.request_namespaces(conn), job_rows.unfinished_job_requests(conn)

        return await self.repo.read(fn)

    async def table_counts(self) -> job_rows.TableCounts:
        """Jobs by kind and state, ended attempts by state, the newest event id."""
        return await self.repo.read(job_rows.table_counts)

    # --- requests, catalog, products -------------------------------------------------------------

    async def request_list(self, *, limit: int, state: str | None) -> list[JsonObject]:
        return await self.repo.read(request_views.request_list(limit=limit, state=state))

    async def request_detail(self, rid: str) -> JsonObject:
        """Raises ``UnknownRequest``."""
        return await self.repo.read(request_views.request_detail(rid))

    async def catalog_add(
        self, entries: Sequence[catalog_rows.NewEntry], *, by: str | None
    ) -> list[JsonObject]:
        """Record (or refresh) catalog entries; new work, so refused while the disk is full."""
        self.repo.admit_new_work()
        return await self.repo.write(catalog_rows.add_entries(entries, by=by))

    async def catalog_entries(self, *, limit: int | None = None) -> list[catalog_rows.CatalogEntry]:
        return await self.repo.read(catalog_rows.list_entries(limit=limit))

    async def products(self, rid: str) -> list[JsonObject]:
        return await self.repo.read(product_rows.list_products(rid))

    async def provenance(self, product_id: str) -> JsonObject:
        """Raises ``UnknownProduct``."""
        return await self.repo.read(product_rows.provenance(product_id))

    # --- console tokens --------------------------------------------------------------------------

    async def create_token(
        self, name: str, role: str, secret_sha256: str, *, by: str
    ) -> token_rows.TokenRecord | None:
        """Store a live token; None (nothing stored) when ``name`` has one already."""
        return await self.repo.write(token_rows.create_token(name, role, secret_sha256, by=by))

    async def revoke_token(self, name: str, *, by: str) -> token_rows.TokenRecord | None:
        """Revoke the live token ``name``; None when it has none."""
        return await self.repo.write(token_rows.revoke_token(name, by=by))

    async def tokens(self, *, revoked: bool = False) -> list[token_rows.TokenRecord]:
        return await self.repo.read(token_rows.list_tokens(revoked=revoked))

    async def token_by_digest(self, secret_sha256: str) -> tuple[str, str] | None:
        """``(name, role)`` of the live token whose secret has this sha256, or None."""
        return await self.repo.read(token_rows.token_by_digest(secret_sha256))

    def statistics(self) -> dict[str, Any]:
        return {
            **self.controller.statistics(),
            **self.runner.statistics(),
            **(self.requests.statistics() if self.requests is not None else {}),
            "repository": attrs.asdict(self.repo.statistics()),
        }


@asynccontextmanager
async def open_engine(config: Config, *, start_local_agents: bool = True) -> AsyncIterator[Engine]:
    """Run an engine for ``config`` for the duration of the block."""
    config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _engine_lock(config.run_dir / "engine.lock"):
        async with _run_engine(config, start_local_agents) as engine:
            yield engine


@contextmanager
def _engine_lock(path: Path) -> Iterator[None]:
    """Refuse to run two engines on one workspace (they would share one repository)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EngineError(
                f"another engine is running on this workspace (lock held: {path})"
            ) from None
        yield
    finally:
        os.close(fd)


@asynccontextmanager
async def _run_engine(config: Config, start_local_agents: bool) -> AsyncIterator[Engine]:
    repo_ctx = open_repository(config.repository_path, wal_max_mb=config.repository.wal_max_mb)
    async with repo_ctx as repo:

        def report(blocked: BlockedReport) -> None:
            repo.write_nowait(
                lambda tx: tx.emit(
                    "engine.blocked", blocked.label, {"seconds": round(blocked.seconds, 3)}
                )
            )

        watchdog = Watchdog(config.engine.blocking_threshold, on_report=report)
        trio.lowlevel.add_instrument(watchdog)
        try:
            scripts = ScriptLibrary.scan([config.path(p) for p in config.engine.rscripts])
            for problem in scripts.errors:  # a bad script is skipped, the engine goes on
                log.error("RScript skipped: %s", problem)
            sign = load_signer(config)
            xmpp = await _xmpp_settings(config)  # a bad [xmpp] fails here, before anything starts
            completions = Completions()
            controller = AgentController(
                repo=repo,
                scripts=scripts,
                completions=completions,
                agents=config.agents,
                jobs=config.jobs,
                sign=sign,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(controller.run)
                # their scripts, and holds on paused ones, before jobs are recovered
                await prepare_requests(repo, scripts, controller)
                counts = await controller.recover()
                if any(counts.values()):
                    log.info("recovered unfinished RScript jobs: %s", counts)
                runner = ActionRunner(
                    repo=repo,
                    library=ActionLibrary([config.path(p) for p in config.engine.actions]),
                    controller=controller,
                    completions=completions,
                    watchdog=watchdog,
                    nursery=nursery,
                )
                socket_path = config.run_dir / "agents.sock"
                await nursery.start(serve_local_agents, controller, socket_path)
                local = LocalAgents(
                    count=config.agents.local if start_local_agents else 0,
                    slots=config.agents.slots,
                    socket_path=socket_path,
                    directory=config.agents_dir,
                    public_key=config.path(config.engine.public_key),
                    heartbeat=config.agents.heartbeat,
                    restart_backoff=config.agents.restart_backoff,
                )
                await local.start()
                # an agent that cannot start stops the engine here (LocalAgentFailed)
                nursery.start_soon(watch_local_agents, local, controller)
                if xmpp is not None:
                    from wfe.engine.transports.xmpp import serve_xmpp_agents

                    agents = config.xmpp.agents
                    await nursery.start(
                        functools.partial(serve_xmpp_agents, controller, xmpp, agents=agents)
                    )
                resumed = await runner.resume_unfinished()
                if resumed:
                    log.info("resumed %d unfinished action(s)", resumed)
                requests = RequestService(
                    repo=repo,
                    controller=controller,
                    runner=runner,
                    products_root=config.root / "products",
                    approval=config.approval,
                )
                await nursery.start(requests.run)
                engine = Engine(
                    config=config,
                    repo=repo,
                    runner=runner,
                    controller=controller,
                    watchdog=watchdog,
                    scripts=scripts,
                    requests=requests,
                )
                try:
                    yield engine
                finally:
                    with trio.CancelScope(shield=True):
                        await local.stop(controller)
                    nursery.cancel_scope.cancel()
        finally:
            trio.lowlevel.remove_instrument(watchdog)
            watchdog.close()


async def _xmpp_settings(config: Config) -> Any:
    """The engine's XMPP settings when ``[xmpp]`` is enabled, else None (slixmpp not loaded)."""
    if not config.xmpp.enabled:
        return None
    # slixmpp takes the best part of a second to import: keep that off the event loop
    await trio.to_thread.run_sync(importlib.import_module, "wfe.engine.transports.xmpp")
    from wfe.engine.transports.xmpp_link import xmpp_settings

    return xmpp_settings(config)


def workspace_files(config: Config) -> dict[str, Path]:
    """Where the engine keeps its files (for `wfe status` and the demo summary)."""
    return {
        "repository": config.repository_path,
        "agents": config.agents_dir,
        "socket": config.run_dir / "agents.sock",
    }
