"""The ``wfe`` command.

Every subcommand has ``--help``; those that print data take ``--json``. On error a command
prints one line, ``wfe: error: <reason>``, and exits non-zero (2 for bad usage).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from wfe.engine import __version__
from wfe.engine.cli.render import print_json, seconds
from wfe.engine.config import CONFIG_NAME, DEFAULT_TOML, Config, load_config
from wfe.engine.errors import EngineError
from wfe.engine.job_states import JobState

log = logging.getLogger("wfe")

Command = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace) -> Config:
    path = Path(args.config or os.environ.get("WFE_CONFIG") or CONFIG_NAME)
    return load_config(path)


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``k=v`` pairs into a dict; a value that parses as JSON is taken as JSON, else as text."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EngineError(f"bad --param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def setup_logging(
    verbose: bool, *, log_format: str = "text", log_file: str | os.PathLike[str] | None = None
) -> None:
    """The engine's log: every logger's records (wfe's and its libraries') to ``log_file``
    (stderr by default) as text or JSON lines (``wfe.agents.log_setup``)."""
    from wfe.agents.log_setup import configure_logging

    try:
        configure_logging(
            level=logging.DEBUG if verbose else logging.INFO,
            log_format=log_format,
            log_file=None if log_file is None else Path(log_file),
            logger="",
        )
    except OSError as exc:
        raise EngineError(f"--log-file {log_file}: {exc.strerror or exc}") from None


def check_listen(host: str, port: int) -> None:
    """Refuse, before anything starts, a console address another process listens on.

    Binds and closes a socket as the console will (``SO_REUSEADDR``, so a port in TIME_WAIT
    passes). Raises ``EngineError`` naming the address and ``[api] port``. Port 0 passes.
    """
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise EngineError(f"[api] host {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                probe.listen(1)
            except OSError as exc:
                raise EngineError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                    " (another engine? set another [api] port in wfe.toml, or 0 for any free port)"
                ) from None


# --- wfe init / engine ---------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from wfe.engine.keys import create_secrets

    directory = Path(args.directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    if path.exists() and not args.force:
        raise EngineError(f"{path} exists (use --force to overwrite)")
    path.write_text(DEFAULT_TOML.format(port=args.port, local=args.local, slots=args.slots))
    config = load_config(path)
    create_secrets(config)
    print(
        f"wrote {path}, the signing key and the console token ({config.path(config.api.token_file)}, mode 0600)"
    )
    print(f"start the engine with: wfe engine --config {path}")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    config = _config(args)
    check_listen(config.api.host, config.api.port)
    setup_logging(args.verbose, log_format=args.log_format, log_file=args.log_file)
    trio.run(run_engine_process, config)
    return 0


async def run_engine_process(config: Config, *, ready: Callable[[int], None] | None = None) -> None:
    """The body of ``wfe engine``: the engine, its API, until SIGINT or SIGTERM."""
    from wfe.engine.console.api import serve_api
    from wfe.engine.keys import read_token
    from wfe.engine.repository.retention import keep_trimmed
    from wfe.engine.runtime.daemon import open_engine

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_engine(config) as engine, trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_api(
                    engine,
                    host=config.api.host,
                    port=config.api.port,
                    token=read_token(config),
                    max_message=config.api.max_message,
                    task_status=task_status,
                )
            )
            nursery.start_soon(keep_trimmed, engine.repo, config.retention)  # [retention]
            (config.run_dir / "api.port").write_text(f"{port}\n")
            (config.run_dir / "engine.pid").write_text(f"{os.getpid()}\n")
            log.info(
                "engine ready: repository %s, console ws://%s:%d/",
                config.repository_path,
                config.api.host,
                port,
            )
            if ready is not None:
                ready(port)
            async for signum in signals:
                log.info(
                    "%s received: stopping (running scripts go on; send it again to stop at once)",
                    signal.Signals(signum).name,
                )
                break
            trio.lowlevel.spawn_system_task(_stop_at_once_on, signals)
            nursery.cancel_scope.cancel()


async def _stop_at_once_on(signals: Any) -> None:
    """A second SIGINT/SIGTERM while the engine stops ends the process at once: as safe as a
    crash (everything is committed before it is acted on), just without the tidy-up."""
    async for signum in signals:
        log.warning("%s received again: stopping at once", signal.Signals(signum).name)
        logging.shutdown()
        os._exit(128 + signum)


# --- client commands -----------------------------------------------------------------------


def _call(args: argparse.Namespace, op: str, **call_args: Any) -> Any:
    from wfe.engine.cli.client import connect_config

    config = _config(args)

    async def go() -> Any:
        async with connect_config(config) as client:
            return await client.call(op, **call_args)

    return trio.run(go)


def cmd_run(args: argparse.Namespace) -> int:
    from wfe.engine.cli.params import split_pairs, typed_params

    split_pairs(args.param)  # a malformed pair fails before connecting
    target = {"rscript": args.target} if args.rscript else {"action": args.target}
    from wfe.engine.cli.client import connect_config

    config = _config(args)

    async def go() -> tuple[str, dict[str, Any] | None]:
        async with connect_config(config) as client:
            params: dict[str, Any] = {}
            if args.param:  # converted to the declared types, as `wfe submit -p` does
                listed = await client.call(
                    "rscripts" if args.rscript else "actions", name=args.target
                )
                declared = listed[0]["params"] if listed else []
                params = typed_params(args.param, declared, target=args.target)
            started = await client.call("run", params=params, **target)
            if not args.wait:
                return started["job"], None
            done = await client.call("wait", job=started["job"])
            return started["job"], done

    job_id, done = trio.run(go)
    if args.json:
        print(
            json.dumps(
                {
                    "job": job_id,
                    **({"state": done["state"], "error": done["error"]} if done else {}),
                }
            )
        )
    elif done is None:
        print(job_id)
    else:
        print(f"{job_id} {done['state']}" + (f": {done['error']}" if done.get("error") else ""))
    return 0 if done is None or done["state"] == JobState.SUCCEEDED else 1


def _is_request_id(text: str) -> bool:
    from wfe.protocols.errors import ProtocolError
    from wfe.protocols.request import parse_request_id

    try:
        parse_request_id(text)
    except ProtocolError:
        return False
    return True


def cmd_status(args: argparse.Namespace) -> int:
    from wfe.engine.cli.watch import print_status, status_filters

    if args.job and _is_request_id(args.job):  # `wfe status REQUEST`: the request's view
        from wfe.engine.cli.requests import cmd_request
        from wfe.engine.cli.simulate import status_of_id

        shown = status_of_id(args)  # or an execution's (wfe simulate): the same id form
        if shown is not None:
            return shown
    if args.watch:
        return _watch_status(args)
    if args.job and _is_request_id(args.job):
        return cmd_request(argparse.Namespace(**{**vars(args), "request": args.job, "wait": False}))
    from wfe.engine.cli.client import connect_config

    config = _config(args)
    filters = status_filters(args)

    async def go() -> dict[str, Any]:
        async with connect_config(config) as client:
            if args.job:
                detail: dict[str, Any] = await client.call("job", job=args.job)
                detail["tree"] = await client.call("tree", job=args.job)
                return detail
            return {
                "statistics": await client.call("stats"),
                "jobs": await client.call("find_jobs", **filters),
            }

    result = trio.run(go)
    if args.json:
        print_json(result)
    else:
        print_status(result, job=args.job)
    return 0


def _watch_status(args: argparse.Namespace) -> int:
    from wfe.engine.cli.client import connect_config
    from wfe.engine.cli.watch import status_drawer, status_filters, until_interrupted, watch_status

    config = _config(args)
    filters = status_filters(args)
    draw = status_drawer(job=args.job, tty=sys.stdout.isatty())

    async def view() -> None:
        async with connect_config(config) as client:
            await watch_status(client, job=args.job, draw=draw, filters=filters)

    until_interrupted(view)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from wfe.engine.cli.client import connect_config

    config = _config(args)
    if not args.follow:
        from wfe.engine.cli.watch import print_logs

        async def pages() -> None:
            async with connect_config(config) as client:
                await print_logs(client, args.job, attempt=args.attempt, write=write_out)

        trio.run(pages)
        return 0

    async def go() -> str:
        async with connect_config(config) as client:
            await client.call("tail", job=args.job)
            async for frame in client.frames():
                if "output" in frame:
                    write_out(frame["output"])
                if frame.get("end"):
                    return str(frame.get("state"))
        return "unknown"

    state = trio.run(go)
    return 0 if state == JobState.SUCCEEDED else 1


def cmd_kill(args: argparse.Namespace) -> int:
    result = _call(args, "kill", job=args.job)
    print(f"{args.job}: kill requested (was {result['state']})")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from wfe.agents.main import main as agent_main

    return agent_main(args.rest)


def cmd_validate(args: argparse.Namespace) -> int:
    from wfe.engine.definitions import check_rscripts, dump_toml, load_definition
    from wfe.rscripts.loader import ScriptLibrary

    definition = load_definition(Path(args.file), overlay=args.overlay)
    for table in definition.expanded.get("testbed", {}).get("unused", ()):
        print(
            f"warning: {args.overlay}: [{table}] matches no table of the definition",
            file=sys.stderr,
        )
    unknown = check_rscripts(
        definition, ScriptLibrary.scan([Path(args.file).parent / "rscripts"]).__contains__
    )
    if unknown:
        raise EngineError(unknown[0])
    if args.json:
        print_json(
            {
                "name": definition.name,
                "namespace": definition.namespace,
                "sha256": definition.sha256,
                "sources": [str(s) for s in definition.sources],
                "expanded": definition.expanded,
            }
        )
    else:
        print(f"# {definition.name} ({definition.namespace}) sha256 {definition.sha256}")
        print(dump_toml(definition.expanded), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from wfe.engine.cli.demo import run_demo

    return run_demo(
        files=args.files, agents=args.agents, keep=not args.clean, seconds_per_job=args.seconds
    )


# --- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wfe", description="wfe: a workflow engine for science data processing"
    )
    parser.add_argument("--version", action="version", version=f"wfe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Command, help: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if config:
            p.add_argument(
                "--config", help=f"path of {CONFIG_NAME} (default: $WFE_CONFIG or ./{CONFIG_NAME})"
            )
        p.set_defaults(fn=fn)
        return p

    p = add(
        "init",
        cmd_init,
        "write a wfe.toml with working defaults, a signing key and a token",
        config=False,
    )
    p.add_argument("directory", nargs="?", default=".")
    p.add_argument("--port", type=int, default=8765, help="console port (0: any free port)")
    p.add_argument("--local", type=int, default=2, help="local agents to start")
    p.add_argument("--slots", type=int, default=2, help="slots per local agent")
    p.add_argument("--force", action="store_true", help="overwrite an existing wfe.toml")

    p = add("engine", cmd_engine, "run the engine daemon (Ctrl-C or SIGTERM stops it)")
    p.add_argument("-v", "--verbose", action="store_true", help="log DEBUG lines too")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="one line of text (default) or one JSON object per record",
    )
    p.add_argument("--log-file", metavar="PATH", help="append the log to PATH instead of stderr")

    p = add("agent", cmd_agent, "run an agent (see `wfe agent --help`)", config=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.add_help = False

    p = add(
        "demo",
        cmd_demo,
        "run a sample workflow on a temporary workspace with two local agents",
        config=False,
    )
    p.add_argument(
        "--files",
        type=int,
        default=12,
        help="data files the sample makes and inspects (2 RScripts each)",
    )
    p.add_argument("--agents", type=int, default=2, help="local agents")
    p.add_argument("--seconds", type=float, default=0.2, help="how long each sample job sleeps")
    p.add_argument("--clean", action="store_true", help="delete the workspace afterwards")

    p = add("run", cmd_run, "start an action (or with --rscript, one RScript) and print its job id")
    p.add_argument(
        "target", help="action name, e.g. demo.survey (or an RScript name with --rscript)"
    )
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter, converted to its declared type (see `wfe actions`, `wfe rscripts`)",
    )
    p.add_argument("--rscript", action="store_true", help="run an RScript directly")
    p.add_argument(
        "--wait", action="store_true", help="wait for the job to end; exit 1 unless it succeeded"
    )
    p.add_argument("--json", action="store_true")

    p = add(
        "status", cmd_status, "show the engine's state and the newest root jobs, or one job's tree"
    )
    p.add_argument(
        "job",
        nargs="?",
        help="a job: its detail and its tree of children; or a request (wfe request ID)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20, help="at most this many jobs (default: 20)")
    p.add_argument(
        "--state",
        action="append",
        default=[],
        choices=[s.value for s in JobState if s is not JobState.PENDING],
        help="only jobs in this state (repeat for several)",
    )
    p.add_argument("--name", help="only jobs whose name matches this glob, e.g. 'demo.*'")
    p.add_argument(
        "--since",
        help="only jobs created since: an ISO date or time (2026-05-01, 2026-05-01T12:00)"
        " or an age (30m, 2h, 7d)",
    )
    p.add_argument("--all", action="store_true", help="child jobs too, not only roots")
    p.add_argument(
        "--watch",
        action="store_true",
        help="redraw when something changes (at most 4 times a second) until Ctrl-C"
        " (with JOB: until the job ends)",
    )

    p = add("logs", cmd_logs, "print a job's output (page by page as the engine sends it)")
    p.add_argument("job")
    p.add_argument("--attempt", type=int)
    p.add_argument("--follow", "-f", action="store_true", help="stream output until the job ends")

    p = add("kill", cmd_kill, "cancel a job and everything it started")
    p.add_argument("job")

    p = add(
        "validate",
        cmd_validate,
        "check a workflow definition and print its expanded form",
        config=False,
    )
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--overlay",
        metavar="TESTBED_TOML",
        help="apply a testbed.toml first, as `wfe submit --overlay` does",
    )

    sub.add_parser(
        "xmpp-dev-server", help="run a local Prosody for development (see --help)", add_help=False
    )
    # Modules that add subcommands: each has ``register(add)``, where ``add(name, fn, help,
    # config=True)`` returns the subparser to fill. Imported here: they import this module.
    from wfe.engine.cli import agents, console, jobs, pilots, requests, simulate, works

    for module in (agents, requests, console, jobs, works, simulate, pilots):
        module.register(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:  # the agent has its own parser (and its own --help)
        from wfe.agents.main import main as agent_main

        return agent_main(argv[1:])
    if argv[:1] == ["xmpp-dev-server"]:
        from wfe.engine.devtools.prosody import main as prosody_main

        return prosody_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.fn(args))
        sys.stdout.flush()  # a closed pipe shows here, not as a message at exit
        return code
    except KeyboardInterrupt:
        return 130
    except (BrokenPipeError, PipeClosed):
        return _pipe_closed()
    except (EngineError, ValueError, LookupError, OSError) as exc:
        from wfe.engine.runtime.actions import one_line

        print(f"wfe: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except ExceptionGroup as group:  # from a nursery: report our own error in one line
        from wfe.engine.runtime.actions import one_line

        if group.subgroup((BrokenPipeError, PipeClosed)) is not None:
            return _pipe_closed()
        ours = group.subgroup(
            lambda e: isinstance(e, EngineError | ValueError | LookupError | OSError)
        )
        if ours is None:
            raise
        print(f"wfe: error: {one_line(ours)}", file=sys.stderr)
        return 1


class PipeClosed(Exception):  # noqa: N818 - not an error of ours: the reader went away
    """Standard output was closed by its reader, raised from inside a connection (where an
    ``OSError`` would read as the engine's)."""


def write_out(text: str) -> None:
    """Write ``text`` to standard output at once. Raises ``PipeClosed`` when its reader has
    gone."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise PipeClosed from None


def _pipe_closed() -> int:
    """The reader of our output went away (``wfe status --json | head``): stop quietly, as
    a command killed by SIGPIPE would (exit 141), and write nothing more to the pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "parse_params", "seconds"]
