"""The ``Engine`` facade: what the console, the CLI and the demo may ask of a running engine.

``open_engine`` (``daemon.py``) builds one from the services it starts. Callers use its
methods only, never the repository or the agent controller behind it: every read and write
they need is a typed method here (its SQL in ``wfe.engine.repository``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio
from prometheus_client import Histogram

from wfe.engine.config import Config
from wfe.engine.dispatch.controller import AgentController
from wfe.engine.pilots.books import PilotBooks
from wfe.engine.repository import (
    Event,
    Repository,
    RepositoryStatistics,
    Subscription,
    listing,
    queries,
    reader,
    request_views,
    retention,
)
from wfe.engine.repository import catalog as catalog_rows
from wfe.engine.repository import jobs as job_rows
from wfe.engine.repository import products as product_rows
from wfe.engine.repository import replicas as replica_rows
from wfe.engine.repository import requests as request_rows
from wfe.engine.repository import search as search_rows
from wfe.engine.repository import tokens as token_rows
from wfe.engine.repository import works as work_rows
from wfe.engine.repository.jobs import JobState
from wfe.engine.repository.retention import PurgeCount
from wfe.engine.repository.rowtypes import Conn, JsonObject
from wfe.engine.repository.space import DiskTrouble
from wfe.engine.runtime import metrics
from wfe.engine.runtime.actions import ActionRunner
from wfe.engine.runtime.watchdog import Watchdog
from wfe.engine.simulate.service import Simulations
from wfe.engine.transports.local_agents import LocalAgents, UnknownGroup
from wfe.engine.works import archive
from wfe.engine.works.leases import Lease, Leases
from wfe.engine.works.model import Work, WorkStatus
from wfe.rscripts.loader import ScriptLibrary

if TYPE_CHECKING:
    from wfe.engine.requests import RequestService
    from wfe.protocols.messages import OutputChunk


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
        leases: Leases | None = None,
        local: LocalAgents | None = None,
    ) -> None:
        self.config = config
        self.repo = repo
        self.runner = runner
        self.controller = controller
        self.watchdog = watchdog
        self.scripts = scripts
        self.requests = requests  # workflow requests (wfe.engine.requests); None in a bare engine
        # the work queue's leases (wfe.engine.works.leases); expired only while its task runs
        self.leases = leases if leases is not None else Leases(repo)
        self.local = local  # the local agents and their groups; None when none are started
        self.pilots = PilotBooks(repo, controller)  # pilots' records and the demand for them
        # simulated executions (wfe simulate), started by the console's simulate op
        self.simulations = Simulations(runner, admit_new_work=self.admit_new_work)

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

    # --- views of the web console (wfe.engine.repository.search) -------------------------------

    async def search(self, query: search_rows.SearchQuery) -> JsonObject:
        """One page of jobs, requests or events matching ``query``, with the total."""
        return await self.repo.read(search_rows.search(query))

    async def timeline(self, *, root: str | None = None, request: str | None = None) -> JsonObject:
        """The attempts of the job tree of ``root`` (raises ``UnknownJob``) or of request
        ``request``'s jobs (raises ``UnknownRequest``), oldest first."""
        if request is not None:
            await self.repo.read(lambda conn: request_rows.get_request(conn, request))
        return await self.repo.read(search_rows.attempt_timeline(root=root, request=request))

    async def request_graph(self, rid: str) -> JsonObject:
        """Request ``rid``'s stage graph and expanded definition. Raises ``UnknownRequest``."""
        return await self.repo.read(search_rows.request_graph(rid))

    async def agent_history(self, name: str) -> JsonObject:
        """Agent ``name`` as the repository and the controller know it: first and last seen,
        its ``agent.*`` events, and ``heard_ago`` (seconds since its last message, None when
        it is not registered now). Raises ``LookupError`` for a name never seen."""
        found = await self.repo.read(search_rows.agent_history(name))
        live = self.controller.agents.get(name)
        if found["first_seen"] is None and live is None:
            raise LookupError(f"no agent {name!r}")
        found["heard_ago"] = None if live is None else trio.current_time() - live.last_heard
        return found

    async def activity(self, *, since: float, until: float, buckets: int) -> JsonObject:
        """RScript jobs ended, queued and running over a time window (``search.activity``)."""
        return await self.repo.read(search_rows.activity(since, until, buckets))

    async def comment_request(self, rid: str, text: str, *, by: str | None) -> None:
        """Record an operator's comment on request ``rid`` (a ``request.comment`` event,
        committed). Raises ``UnknownRequest``."""
        await self.repo.read(lambda conn: request_rows.get_request(conn, rid))
        data: JsonObject = {"by": by, "text": text}
        await self.repo.write(lambda tx: tx.emit("request.comment", rid, data))

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
        """Every agent the controller knows, with its group (local agents), and the local
        agents of groups that are down (state ``down``) or not connected yet (``starting``)."""
        table = queries.agent_table(self.controller)
        local = self.local
        if local is None:
            return table
        for row in table:
            name = str(row["name"])
            row["group"] = local.group_of(name)
            if row["group"] is not None and not local.running(name) and row["state"] != "connected":
                row["state"] = "down"  # taken down (or never up): its silence is expected
        known = {row["name"] for row in table}
        for name in local.names:
            if name not in known:
                group = local.groups[local.group_of(name) or ""]
                table.append(
                    {
                        "name": name,
                        "group": local.group_of(name),
                        "transport": "local",
                        "state": "starting" if local.running(name) else "down",
                        "slots": group.slots or self.config.agents.slots,
                        "free_slots": 0,
                        "running": [],
                        "site": group.site,
                        "tags": list(group.tags),
                        "memory": None,
                    }
                )
        return sorted(table, key=lambda row: str(row["name"]))

    def agent_groups(self, group: str | None) -> list[str]:
        """``group``, or every group of local agents when None. Raises ``UnknownGroup``."""
        if self.local is None:
            raise UnknownGroup("this engine starts no local agents")
        if group is None:
            return list(self.local.groups)
        self.local.members(group)  # raises UnknownGroup
        return [group]

    async def agents_up(self, group: str | None) -> list[str]:
        """Start the local agents of ``group`` (every group when None) that do not run;
        return the agents started. Raises ``UnknownGroup``."""
        started: list[str] = []
        for name in self.agent_groups(group):
            assert self.local is not None
            started += await self.local.up(name)
        return started

    async def agents_down(self, group: str | None) -> list[str]:
        """Stop the local agents of ``group`` (every group when None); what they run goes on
        under their keepers. Return the agents stopped. Raises ``UnknownGroup``."""
        stopped: list[str] = []
        for name in self.agent_groups(group):
            assert self.local is not None
            stopped += await self.local.down(name, self.controller)
        return stopped

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

    async def catalog_add_at(
        self, entries: Sequence[catalog_rows.NewEntry], rse: str, *, by: str | None
    ) -> list[JsonObject]:
        """``catalog_add``, each path also recorded as its replica at storage element ``rse``."""
        self.repo.admit_new_work()
        return await self.repo.write(replica_rows.add_with_replica(entries, rse, by=by))

    async def replica_add(self, replicas: Sequence[replica_rows.Replica], *, by: str) -> int:
        """Record replicas of catalog entries; raises ``UnknownEntry`` (nothing stored)."""
        return await self.repo.write(replica_rows.add_replicas(replicas, by=by))

    async def replica_remove(self, path: str, rse: str, *, by: str) -> bool:
        return await self.repo.write(replica_rows.remove_replica(path, rse, by=by))

    async def replicas(self, path: str | None = None) -> list[replica_rows.Replica]:
        return await self.repo.read(replica_rows.list_replicas(path))

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

    # --- the work queue (wfe.engine.works) -------------------------------------------------------

    async def deposit_works(self, works: Sequence[Work], *, by: str | None) -> list[str]:
        """Queue ``works`` (all or none); return their ids. New work: refused while the disk
        is full."""
        self.repo.admit_new_work()
        return await self.repo.write(work_rows.deposit_works(works, by=by))

    async def withdraw_work(self, query: work_rows.WorkQuery, *, worker: str) -> Work | None:
        """The best queued work matching ``query``, now running under ``worker``'s lease."""
        work = await self.repo.write(work_rows.withdraw_work(query, worker=worker))
        if work is not None:
            self.leases.hold(work)
        return work

    def renew_work_lease(self, work_id: str, attempt: int) -> Lease:
        """A worker's heartbeat; raises ``WorkError`` when that attempt holds no lease."""
        return self.leases.renew(work_id, attempt)

    async def update_work(
        self, work_id: str, *, attempt: int, changes: JsonObject, by: str | None
    ) -> Work:
        """Record a running work's results and status (``works.update_work``); an update is
        also a heartbeat, and one that ends the attempt ends its lease."""
        async with self._archiving(work_id, changes) as files:
            work = await self.repo.write(
                work_rows.update_work(work_id, attempt=attempt, changes=changes, by=by, files=files)
            )
        if work.status is WorkStatus.RUNNING:
            self.leases.renew(work_id, attempt)
        else:
            self.leases.release(work_id)
        return work

    async def update_and_withdraw_work(
        self,
        work_id: str,
        *,
        attempt: int,
        changes: JsonObject,
        by: str,
        query: work_rows.WorkQuery,
    ) -> tuple[Work, Work | None]:
        """``update_work`` and then ``withdraw_work(query, worker=by)``, in one transaction."""
        async with self._archiving(work_id, changes) as files:
            work, after = await self.repo.write(
                work_rows.update_and_withdraw(
                    work_id, attempt=attempt, changes=changes, by=by, query=query, files=files
                )
            )
        if work.status is WorkStatus.RUNNING:
            self.leases.renew(work_id, attempt)
        else:
            self.leases.release(work_id)
        if after is not None:
            self.leases.hold(after)
        return work, after

    @asynccontextmanager
    async def _archiving(
        self, work_id: str, changes: JsonObject
    ) -> AsyncIterator[list[archive.ArchivedFile]]:
        """Copy the products and plots of a work being updated to success into the archive
        (``wfe.engine.works.archive``) and yield what was copied; remove the copies when the
        block (the update) fails."""
        if not archive.wanted(changes):
            yield []
            return
        work = await self.work(work_id)
        if not work.archive:
            yield []
            return
        root, products, plots = self.config.root, changes.get("products"), changes.get("plots")
        files = await trio.to_thread.run_sync(
            archive.archive_files, root, work.pipeline, work_id, products, plots
        )
        try:
            yield files
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(archive.remove_archive, root, work.pipeline, work_id)
            raise

    async def work_files(self, work_id: str) -> list[archive.ArchivedFile]:
        """The archive's record of a work's products and plots. Raises ``UnknownWork``."""
        await self.work(work_id)
        return await self.repo.read(work_rows.work_files(work_id))

    async def cancel_work(self, work_id: str, *, by: str | None) -> Work:
        work = await self.repo.write(work_rows.cancel_work(work_id, by=by))
        self.leases.release(work_id)
        return work

    async def delete_works(self, ids: Sequence[str], *, by: str | None) -> list[str]:
        deleted = await self.repo.write(work_rows.delete_works(ids, by=by))
        for work_id in deleted:
            self.leases.release(work_id)
        return deleted

    async def work(self, work_id: str) -> Work:
        """Raises ``UnknownWork``."""
        return await self.repo.read(work_rows.read_work(work_id))

    async def find_works(
        self, query: work_rows.WorkQuery, *, limit: int, offset: int = 0
    ) -> list[Work]:
        return await self.repo.read(work_rows.find_works(query, limit=limit, offset=offset))

    async def count_works(self, query: work_rows.WorkQuery) -> int:
        return await self.repo.read(work_rows.count_works(query))

    async def buckets(self) -> dict[str, dict[str, int]]:
        """Works per pipeline and status."""
        return await self.repo.read(work_rows.bucket_counts)

    def statistics(self) -> dict[str, Any]:
        return {
            **self.controller.statistics(),
            **self.runner.statistics(),
            **(self.requests.statistics() if self.requests is not None else {}),
            "repository": attrs.asdict(self.repo.statistics()),
        }
