"""``wfe agent``: the agent daemon's command line.

Exit codes: 0 when the engine sent ``Shutdown`` or a SIGTERM/SIGINT stopped the agent,
1 when it gave up waiting for an engine (``--give-up-after``) or failed, 2 for a bad
command line or configuration, 3 when another agent process holds the same spool.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from wfe.agents.config import AgentConfig, load_config
from wfe.agents.core import Agent, AgentExit
from wfe.agents.errors import AgentError, ConfigError, LinkConfigError, LinkError, SpoolLocked
from wfe.agents.lifetime import Lifetime, watch_lifetime
from wfe.agents.link import Link
from wfe.agents.log_setup import FORMATS, configure_logging
from wfe.agents.reactors import Reactors
from wfe.agents.spool import Spool
from wfe.links.stream import open_local_link
from wfe.protocols.messages import Capabilities
from wfe.protocols.signing import InvalidKey, load_public_key

log = logging.getLogger("wfe.agent")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent until it is told to stop; return the process exit code."""
    logs, argv = _log_flags(argv)
    try:
        config = load_config(argv)
        connect = connector(config)
        key = trusted_key(config)
        lifetime(config)  # a wall time too short fails here, as a usage error
    except SystemExit as exc:  # argparse: --help, or a usage error already printed
        if exc.code == 0:
            print(LOG_HELP)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except (ConfigError, LinkConfigError) as exc:
        print(f"wfe agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        _configure_logging(config, logs)
    except OSError as exc:
        print(f"wfe agent: --log-file {logs.log_file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        spool = Spool(config.spool)
        with spool.locked():
            agent = make_agent(config, spool, key)
            if key is None:
                log.warning("no trusted key: dispatches are checked by sha256 only, not signature")
            outcome = trio.run(_run, agent, connect, config.give_up_after, lifetime(config))
    except SpoolLocked as exc:
        print(f"agent {config.name} is already running (spool locked: {exc.path})", file=sys.stderr)
        return EXIT_LOCKED
    except (AgentError, LinkError) as exc:  # e.g. the XMPP server refused our account
        print(f"agent {config.name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"agent {config.name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    log.info("agent stopped: %s", outcome.value)
    return EXIT_FAILED if outcome is AgentExit.GAVE_UP else EXIT_OK


def make_agent(config: AgentConfig, spool: Spool, key: Ed25519PublicKey | None) -> Agent:
    """The ``Agent`` a configuration describes, on ``spool`` (which the caller locks)."""
    return Agent(
        name=config.name,
        capabilities=Capabilities(
            slots=config.slots,
            memory=config.memory,
            site=config.site,
            tags=config.tags,
            storage=config.storage,
            namespace=config.namespace,
            topics=tuple(sorted(config.reactors)),
        ),
        spool=spool,
        workdir=config.workdir,
        trusted_key=key,
        heartbeat=config.heartbeat,
        keep_workdirs=config.keep_workdirs,
        reactors=Reactors(
            config.reactors, spool=config.spool, workdir=config.workdir, slots=config.slots
        )
        if config.reactors
        else None,
    )


def lifetime(config: AgentConfig) -> Lifetime | None:
    """When the agent leaves by itself (``--idle-exit``, ``--walltime``), or None.
    Raises ``ConfigError`` for a wall time too short to work in."""
    if config.idle_exit is None and config.walltime is None:
        return None
    try:
        return Lifetime(idle_exit=config.idle_exit, walltime=config.walltime)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def connector(config: AgentConfig) -> Callable[[], AbstractAsyncContextManager[Link]]:
    """How to reach the engine, from the transport the configuration names."""
    if config.socket is not None:
        return functools.partial(open_local_link, config.socket)
    if config.xmpp:
        from wfe.agents.xmpp_connector import xmpp_connector  # slixmpp only loads in XMPP mode

        return xmpp_connector(config)
    raise ConfigError(
        'no transport: give --socket PATH (or socket = "..." in agent.toml), or --xmpp'
    )


def trusted_key(config: AgentConfig) -> Ed25519PublicKey | None:
    """The public key dispatches must be signed with, or None. Raises ``ConfigError``."""
    if config.trusted_key is None:
        return None
    try:
        return load_public_key(config.trusted_key.read_bytes())
    except OSError as exc:
        raise ConfigError(f"trusted key {config.trusted_key}: {exc.strerror or exc}") from None
    except InvalidKey as exc:
        raise ConfigError(f"trusted key {config.trusted_key}: {exc}") from None


LOG_HELP = """
logging:
  --log-format {text,json}  one line of text (default) or one JSON object per record
  --log-file PATH           append the log to PATH instead of stderr"""


def _log_flags(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Take ``--log-format`` and ``--log-file`` out of ``argv``; return them and the rest."""
    p = argparse.ArgumentParser(prog="wfe agent", add_help=False, allow_abbrev=False)
    p.add_argument("--log-format", choices=FORMATS, default="text")
    p.add_argument("--log-file", type=Path)
    return p.parse_known_args(sys.argv[1:] if argv is None else list(argv))


def _configure_logging(config: AgentConfig, logs: argparse.Namespace) -> None:
    # The agent logs a line per attempt; records need no caller, thread or process details
    # (the format shows none), and gathering them cost a third of each line's time.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the documented switch for "no caller lookup"
    name = config.name.replace("%", "%%")
    configure_logging(
        level=config.log_level,
        log_format=logs.log_format,
        log_file=logs.log_file,
        text_format=f"%(asctime)s agent {name} %(levelname)s %(message)s",
        static={"agent": config.name},
    )


async def _run(
    agent: Agent,
    connect: Callable[[], AbstractAsyncContextManager[Link]],
    give_up_after: float | None,
    life: Lifetime | None = None,
) -> AgentExit:
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, agent)
            if life is not None:  # --idle-exit, --walltime: a pilot's short life
                nursery.start_soon(watch_lifetime, agent, life)
            async with _hosting(connect, agent):
                outcome = await agent.run(connect, give_up_after=give_up_after)
            nursery.cancel_scope.cancel()
    except* (AgentError, LinkError) as group:
        raise _first(group) from None
    return outcome


def _hosting(
    connect: Callable[[], AbstractAsyncContextManager[Link]], agent: Agent
) -> AbstractAsyncContextManager[object]:
    """Transports that keep a connection across sessions (XMPP) run for the whole life."""
    hosted = getattr(connect, "hosted", None)
    if hosted is None:
        return contextlib.nullcontext()
    context: AbstractAsyncContextManager[object] = hosted(
        name=agent.name, capabilities=agent.capabilities, status=agent.status
    )
    return context


def _first(group: BaseExceptionGroup[AgentError | LinkError]) -> AgentError | LinkError:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, AgentError | LinkError)
    return leaf


async def _stop_on_signals(agent: Agent) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: stopping (running attempts are cancelled)", signal.Signals(signum).name)
            agent.stop()
