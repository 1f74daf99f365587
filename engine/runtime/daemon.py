"""The engine process: the root nursery and its long-lived services.

``open_engine`` starts, in order: the repository writer, the agent controller (dispatcher
and timers), recovery of unfinished jobs, the local agent socket and the local agents, and
the resumption of unfinished actions. It yields an ``Engine`` (``facade.py``), the facade
the console API, the CLI and the demo use. Leaving the context stops the local agents (they
exit and leave what they run to their keepers: a stop cancels nothing) and cancels the services;
unfinished jobs stay unfinished in the repository, and the next start picks them up exactly
as after a crash.
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import trio

from wfe.engine.config import Config
from wfe.engine.dispatch.controller import AgentController
from wfe.engine.errors import EngineError
from wfe.engine.keys import load_signer
from wfe.engine.repository import open_repository
from wfe.engine.requests import RequestService
from wfe.engine.requests import prepare as prepare_requests
from wfe.engine.runtime.actions import ActionRunner
from wfe.engine.runtime.facade import Engine
from wfe.engine.runtime.jobs import Completions
from wfe.engine.runtime.tasklets import ActionLibrary
from wfe.engine.runtime.watchdog import BlockedReport, Watchdog
from wfe.engine.transports.local import serve_local_agents
from wfe.engine.transports.local_agents import LocalAgents, watch_local_agents
from wfe.engine.works.leases import Leases
from wfe.rscripts.loader import ScriptLibrary

__all__ = ["Engine", "open_engine", "workspace_files"]

log = logging.getLogger("wfe.engine")


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
                fair_share=config.fair_share,
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
                    groups=config.agents.all_groups() if start_local_agents else {},
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
                    storage=config.storage,
                    sites=config.sites,
                    request_types=config.request_types,
                )
                await nursery.start(requests.run)
                leases = Leases(repo)  # the work queue: running works get a full lease again
                await leases.recover()
                await nursery.start(leases.run)
                engine = Engine(
                    config=config,
                    repo=repo,
                    runner=runner,
                    controller=controller,
                    watchdog=watchdog,
                    scripts=scripts,
                    requests=requests,
                    leases=leases,
                    local=local,
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
