"""``python -m wfe.agents.many``: several agents in one process, one trio run.

A host that offers many small slots (a test bed, a benchmark, a node carved into agents of
one CPU each) need not run one Python process per agent: ``--count K`` agents run side by
side in one trio run, each a whole agent (its own spool, work directory, keeper, XMPP account
and session), sharing only the process and its trio-asyncio loop. The command line is that of
``wfe agent``, where ``{n}`` in ``--name``, ``--jid``, ``--password-file``, ``--spool`` and
``--workdir`` (and in the same keys of ``--config``) becomes the agent's number,
``--first`` .. ``--first + K - 1``:

    python -m wfe.agents.many --count 100 --first 1 --xmpp --jid 'agent{n}@example.org' \\
        --password-file 'pw/agent{n}' --spool 'a/{n}/spool' --workdir 'a/{n}/work' ...

At most ``--starting`` agents (default 8) are starting at once, from their start to their
first session with a controller: each start costs a keeper process and a login, and a hundred
at once on a small host made both time out. Each agent is configured and checked as ``wfe
agent`` would do it, before any starts. One that
fails later (its account refused) is logged and the others go on. SIGTERM or SIGINT stops them
all. Exit codes as ``wfe agent``: 0 when all stopped as told, 1 when any gave up or failed, 2 for
a bad command line, 3 when a spool is locked by another process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

import trio

from wfe.agents.config import AgentConfig, load_config
from wfe.agents.core import Agent, AgentExit
from wfe.agents.errors import AgentError, ConfigError, LinkConfigError, LinkError, SpoolLocked
from wfe.agents.link import Link
from wfe.agents.log_setup import configure_logging
from wfe.agents.main import connector, make_agent, trusted_key
from wfe.agents.spool import Spool

log = logging.getLogger("wfe.agent")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3
#: The flags whose value may name one agent: ``{n}`` in them is the agent's number.
PER_AGENT = ("--name", "--jid", "--password-file", "--spool", "--workdir", "--config")
#: Of those, the ones no two agents may share.
DISTINCT = ("--name", "--jid", "--spool", "--workdir")
#: Agents of one process starting at once (``--starting``).
DEFAULT_STARTING = 8

Connect = Callable[[], AbstractAsyncContextManager[Link]]


def agent_argv(argv: Sequence[str], n: int) -> list[str]:
    """``argv`` for agent number ``n``: ``{n}`` replaced in the per-agent flags' values.
    Raises ``ConfigError`` when a per-agent flag has no ``{n}`` (every agent would share it)."""
    out: list[str] = []
    args = list(argv)
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in PER_AGENT and eq:
            out.append(f"{flag}={_number(flag, value, n)}")
        elif i > 0 and args[i - 1] in PER_AGENT:
            out.append(_number(args[i - 1], arg, n))
        else:
            out.append(arg)
    return out


def _number(flag: str, value: str, n: int) -> str:
    if "{n}" not in value and flag in DISTINCT:
        raise ConfigError(f"{flag} {value!r}: put {{n}} in it, or every agent would share it")
    return value.replace("{n}", str(n))


def parse(argv: Sequence[str]) -> tuple[int, int, int, list[str]]:
    """(count, first, starting, the rest for ``wfe agent``). Raises ``SystemExit``."""
    p = argparse.ArgumentParser(
        prog="python -m wfe.agents.many",
        description="Run several wfe agents in one process; other flags as `wfe agent`, "
        "with {n} (the agent's number) in --name, --jid, --password-file, --spool, --workdir.",
        allow_abbrev=False,
    )
    p.add_argument("--count", type=int, required=True, help="how many agents (at least 1)")
    p.add_argument("--first", type=int, default=1, help="the first agent's number (default 1)")
    p.add_argument(
        "--starting",
        type=int,
        default=DEFAULT_STARTING,
        help="agents starting at once: each counts from its start to its first session with"
        f" a controller (default {DEFAULT_STARTING})",
    )
    known, rest = p.parse_known_args(argv)
    if known.count < 1:
        p.error(f"--count must be at least 1, not {known.count}")
    if known.starting < 1:
        p.error(f"--starting must be at least 1, not {known.starting}")
    return known.count, known.first, known.starting, rest


def main(argv: Sequence[str] | None = None) -> int:
    """Configure every agent, then run them all until told to stop; the exit code."""
    try:
        count, first, starting, rest = parse(sys.argv[1:] if argv is None else argv)
        configs = [load_config(agent_argv(rest, n)) for n in range(first, first + count)]
        connects = [connector(c) for c in configs]
        key = trusted_key(configs[0])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except (ConfigError, LinkConfigError) as exc:
        print(f"wfe agents: {exc}", file=sys.stderr)
        return EXIT_USAGE
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        print("wfe agents: two agents have the same name: put {n} in --name", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(configs[0])
    try:
        with contextlib.ExitStack() as stack:
            agents = []
            for config in configs:
                spool = Spool(config.spool)
                stack.enter_context(spool.locked())
                agents.append(make_agent(config, spool, key))
            outcomes = trio.run(run_all, agents, connects, configs, starting)
    except SpoolLocked as exc:
        print(f"wfe agents: a spool is locked by another process: {exc.path}", file=sys.stderr)
        return EXIT_LOCKED
    except OSError as exc:
        print(f"wfe agents: {exc}", file=sys.stderr)
        return EXIT_FAILED
    failed = sum(1 for o in outcomes if o is not AgentExit.STOPPED)
    log.info("%d agent(s) stopped, %d gave up or failed", len(outcomes) - failed, failed)
    return EXIT_FAILED if failed else EXIT_OK


async def run_all(
    agents: Sequence[Agent],
    connects: Sequence[Connect],
    configs: Sequence[AgentConfig],
    starting: int = DEFAULT_STARTING,
) -> list[AgentExit | None]:
    """Run every agent until it ends; its outcome, or None when it failed (logged).

    At most ``starting`` agents start at once: the next starts when one has its first session
    with a controller (or ended). Each start costs a keeper process and a login; all of them
    at once on a small host made both time out."""
    outcomes: list[AgentExit | None] = [None] * len(agents)
    limit = trio.Semaphore(starting)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, agents)
        async with trio.open_nursery() as running:
            for i, (agent, connect, config) in enumerate(
                zip(agents, connects, configs, strict=True)
            ):
                await limit.acquire()
                started = _Started(limit)
                running.start_soon(
                    _run_one, agent, connect, started, config.give_up_after, outcomes, i
                )
        nursery.cancel_scope.cancel()
    return outcomes


class _Started:
    """Gives back one place in the start limit, once."""

    def __init__(self, limit: trio.Semaphore) -> None:
        self._limit: trio.Semaphore | None = limit

    def __call__(self) -> None:
        limit, self._limit = self._limit, None
        if limit is not None:
            limit.release()


async def _run_one(
    agent: Agent,
    connect: Connect,
    started: _Started,
    give_up_after: float | None,
    outcomes: list[AgentExit | None],
    index: int,
) -> None:
    @contextlib.asynccontextmanager
    async def session() -> AsyncIterator[Link]:
        async with connect() as link:
            started()
            yield link

    try:
        async with _hosting(connect, agent):
            outcomes[index] = await agent.run(session, give_up_after=give_up_after)
    except* (AgentError, LinkError, OSError) as group:
        log.error("agent %s failed: %s", agent.name, _first(group))
    finally:
        started()


def _hosting(connect: Connect, agent: Agent) -> AbstractAsyncContextManager[object]:
    """The XMPP connector keeps its connection for the agent's whole life (as ``wfe agent``)."""
    hosted = getattr(connect, "hosted", None)
    if hosted is None:
        return contextlib.nullcontext()
    context: AbstractAsyncContextManager[object] = hosted(
        name=agent.name, capabilities=agent.capabilities, status=agent.status
    )
    return context


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


async def _stop_on_signals(agents: Sequence[Agent]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: stopping %d agent(s)", signal.Signals(signum).name, len(agents))
            for agent in agents:
                agent.stop()


def _configure_logging(config: AgentConfig) -> None:
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the documented switch for "no caller lookup"
    configure_logging(
        level=config.log_level,
        log_format="text",
        log_file=None,
        text_format="%(asctime)s agents %(levelname)s %(message)s",
        static={},
    )


if __name__ == "__main__":
    raise SystemExit(main())
