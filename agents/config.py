"""The agent's settings: command-line flags over an optional ``agent.toml`` over defaults.

The TOML file holds the flags' keys at top level, with underscores
(``give_up_after = 30``, ``tags = ["gpu"]``). Relative paths in the file are taken relative
to the file's directory; relative paths given as flags, relative to the current directory.
Every problem is a ``ConfigError`` of one line. A value that came from the file is named by
the file and its key (``agent.toml: slots must be at least 1, not 0``); one from a flag, as
the command line has it. Numbers of seconds must be finite (no ``nan`` or ``inf``).
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from wfe.agents.core import DEFAULT_HEARTBEAT
from wfe.agents.errors import ConfigError
from wfe.protocols.broadcasts import topic_problem
from wfe.protocols.xmpp import MIN_MAX_STANZA, is_bare_jid, is_loopback


def _cpu_count() -> int:
    return os.cpu_count() or 1


@attrs.frozen(kw_only=True)
class AgentConfig:
    """Everything ``wfe agent`` needs to start."""

    name: str
    socket: Path | None = None  # the engine's Unix socket (local transport)
    slots: int = attrs.field(factory=_cpu_count)  # one attempt per CPU
    memory: int | None = None
    site: str = "local"
    tags: tuple[str, ...] = ()
    storage: tuple[str, ...] = ()
    namespace: str = ""  # whose broadcasts it hears (with reactors)
    reactors: dict[str, Path] = attrs.field(factory=dict)  # topic -> script run on a broadcast
    spool: Path
    workdir: Path
    trusted_key: Path | None = None
    heartbeat: float = DEFAULT_HEARTBEAT
    give_up_after: float | None = None
    idle_exit: float | None = None  # leave after this long with nothing to do (pilots)
    walltime: float | None = None  # leave before this long has passed (pilots)
    keep_workdirs: bool = False
    log_level: str = "INFO"
    # XMPP transport (see docs/xmpp.md); ``xmpp = true`` instead of ``socket``
    xmpp: bool = False
    jid: str | None = None  # the agent's bare JID
    password_file: Path | None = None
    server: str | None = None  # host to connect to (default: the JID's domain)
    port: int = 5222
    controllers: tuple[str, ...] = ()  # bare JIDs of the controllers this agent obeys
    tls: str = "starttls"  # "starttls" (certificate verified) or "plain" (loopback only)
    ca_file: Path | None = None  # PEM CA bundle for a private CA (default: the system's)
    max_dispatch_age: float = 300.0  # refuse dispatches signed longer ago (0: no check)
    max_stanza: int = 256 * 1024  # the server's stanza size limit


#: Heartbeat of an XMPP agent when none is given: the same as any agent's.
XMPP_HEARTBEAT = DEFAULT_HEARTBEAT

#: Key -> (expected JSON-ish kind, description used in errors).
_KEYS: dict[str, tuple[type[Any], str]] = {
    "name": (str, "a string"),
    "socket": (Path, "a path string"),
    "slots": (int, "an integer"),
    "memory": (int, "an integer (bytes)"),
    "site": (str, "a string"),
    "tags": (tuple, "an array of strings"),
    "storage": (tuple, "an array of strings"),
    "namespace": (str, "a string"),
    "reactors": (dict, 'a table of topic = "script path"'),
    "spool": (Path, "a path string"),
    "workdir": (Path, "a path string"),
    "trusted_key": (Path, "a path string"),
    "heartbeat": (float, "a number (seconds)"),
    "give_up_after": (float, "a number (seconds)"),
    "idle_exit": (float, "a number (seconds)"),
    "walltime": (float, "a number (seconds)"),
    "keep_workdirs": (bool, "true or false"),
    "log_level": (str, "a string"),
    "xmpp": (bool, "true or false"),
    "jid": (str, "a string"),
    "password_file": (Path, "a path string"),
    "server": (str, "a string"),
    "port": (int, "an integer"),
    "controllers": (tuple, "an array of strings"),
    "tls": (str, "a string"),
    "ca_file": (Path, "a path string"),
    "max_dispatch_age": (float, "a number (seconds)"),
    "max_stanza": (int, "an integer (bytes)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``wfe agent`` argument parser; no flag has a default (see ``load_config``)."""
    p = argparse.ArgumentParser(
        prog="wfe agent",
        description="Run RScripts for a wfe engine on this host.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", type=Path, help="agent.toml with the same keys (flags win)")
    p.add_argument("--name", help="the agent's name (default: the host name)")
    p.add_argument("--socket", type=Path, help="the engine's Unix socket (local transport)")
    p.add_argument("--slots", type=int, help="attempts run at once (default: CPU count)")
    p.add_argument("--memory", type=int, help="bytes of memory offered to scripts")
    p.add_argument("--site", help="the site this host belongs to (default: local)")
    p.add_argument("--tag", dest="tags", action="append", help="a tag offered (repeat)")
    p.add_argument("--storage", action="append", help="a storage area readable here (repeat)")
    p.add_argument("--namespace", help="the namespace whose broadcasts it hears (with reactors)")
    p.add_argument(
        "--reactor",
        dest="reactors",
        action="append",
        metavar="TOPIC=SCRIPT",
        help="run SCRIPT on each broadcast of TOPIC in the namespace (repeat)",
    )
    p.add_argument("--spool", type=Path, help="where results wait for the engine's ack")
    p.add_argument("--workdir", type=Path, help="where attempts run")
    p.add_argument("--trusted-key", type=Path, help="PEM public key dispatches must be signed with")
    p.add_argument(
        "--heartbeat",
        type=float,
        help=f"seconds between status messages (default: {DEFAULT_HEARTBEAT:g})",
    )
    p.add_argument(
        "--give-up-after", type=float, help="exit after this many seconds without an engine"
    )
    p.add_argument(
        "--idle-exit", type=float, help="leave after this many seconds with nothing to do"
    )
    p.add_argument(
        "--walltime",
        type=float,
        help="leave before this many seconds have passed: take no new work near the end,"
        " hand back what still runs (a pilot's batch wall time; wfe.agents.lifetime)",
    )
    p.add_argument("--keep-workdirs", action="store_true", help="keep each attempt's directory")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    x = p.add_argument_group("XMPP transport (agents on other hosts; see docs/xmpp.md)")
    x.add_argument("--xmpp", action="store_true", help="connect over XMPP instead of --socket")
    x.add_argument("--jid", help="the agent's bare JID, e.g. agent-node17@wfe.example.org")
    x.add_argument("--password-file", type=Path, help="file holding the JID's password (0600)")
    x.add_argument("--server", help="XMPP server host (default: the JID's domain)")
    x.add_argument("--port", type=int, help="XMPP server port (default: 5222)")
    x.add_argument(
        "--controller",
        dest="controllers",
        action="append",
        help="a controller JID to obey (repeat)",
    )
    x.add_argument(
        "--tls", choices=("starttls", "plain"), help="default starttls; plain: loopback only"
    )
    x.add_argument(
        "--ca-file", type=Path, help="PEM CA bundle that signed the server's certificate"
    )
    x.add_argument(
        "--max-dispatch-age",
        type=float,
        help="refuse dispatches signed longer ago than this many seconds (default 300; 0: no check)",
    )
    x.add_argument(
        "--max-stanza", type=int, help="the server's stanza size limit (default 256 KiB)"
    )
    return p


def _check(where: str, key: str, value: Any, base: Path) -> Any:
    kind, description = _KEYS[key]
    ok = (
        (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (kind in (str, Path) and isinstance(value, str))
        or (kind is bool and isinstance(value, bool))
        or (kind is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value))
        or (
            kind is dict
            and isinstance(value, dict)
            and all(isinstance(v, str) for v in value.values())
        )
    )
    if not ok:
        raise ConfigError(f"{where}: {key}: expected {description}, got {value!r}")
    if kind is Path:
        return base / Path(value).expanduser()
    if kind is dict:
        return {topic: base / Path(script).expanduser() for topic, script in value.items()}
    if kind is tuple:
        return tuple(value)
    if kind is float:
        return float(value)
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """The checked settings of an ``agent.toml``. Raises ``ConfigError``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(_KEYS)})")
        settings[key] = _check(str(path), key, value, path.parent)
    return settings


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "wfe"


class _Origin:
    """Where each setting came from, so that an error names it as it was written.

    A value from the file is named ``<file>: <key> ...``; a value from a flag (or a missing
    one) gets the flag-side message, which the caller words.
    """

    def __init__(self, from_file: dict[str, str]) -> None:
        self.from_file = from_file  # key -> the file that set it (and no flag overrode it)

    def error(self, key: str, message: str, flag_message: str | None = None) -> ConfigError:
        """``message`` (which names ``key``) after the file's name when the value came from
        the file; otherwise ``flag_message`` (default: ``message``)."""
        path = self.from_file.get(key)
        if path is not None:
            return ConfigError(f"{path}: {message}")
        return ConfigError(message if flag_message is None else flag_message)


def load_config(argv: Sequence[str] | None = None) -> AgentConfig:
    """Parse flags, read ``--config`` if given, apply defaults and check the values.

    Raises ``ConfigError`` naming the file and key for a value from the file; argparse's own
    usage errors raise ``SystemExit(2)``.
    """
    args = vars(build_parser().parse_args(argv))
    settings: dict[str, Any] = {}
    from_file: dict[str, str] = {}
    config_path = args.pop("config", None)
    if config_path is not None:
        settings.update(read_config_file(config_path))
        from_file = {key: str(config_path) for key in settings if key not in args}
    settings.update(args)
    origin = _Origin(from_file)
    for key, (kind, _) in _KEYS.items():
        value = settings.get(key)
        if kind is float and value is not None and not math.isfinite(value):
            raise origin.error(key, f"{key} must be a finite number, not {value}")
    if settings.get("xmpp"):
        _check_xmpp(settings, origin)
    name = settings.setdefault("name", socket.gethostname().split(".")[0])
    if not name or any(c.isspace() for c in name):
        raise origin.error(
            "name",
            f"name {name!r} must be non-empty and contain no spaces",
            f"agent name {name!r} must be non-empty and contain no spaces",
        )
    home = _state_dir() / f"agent-{name}"
    settings.setdefault("spool", home / "spool")
    settings.setdefault("workdir", home / "work")
    settings["tags"] = tuple(settings.get("tags", ()))
    settings["storage"] = tuple(settings.get("storage", ()))
    settings["reactors"] = _reactors(settings.get("reactors", {}), origin)
    if settings.get("slots", 1) < 1:
        raise origin.error("slots", f"slots must be at least 1, not {settings['slots']}")
    if settings.get("memory") is not None and settings["memory"] < 1:
        raise origin.error(
            "memory", f"memory must be a positive number of bytes, not {settings['memory']}"
        )
    if settings.get("heartbeat", DEFAULT_HEARTBEAT) <= 0:
        raise origin.error("heartbeat", f"heartbeat must be positive, not {settings['heartbeat']}")
    if settings.get("give_up_after") is not None and settings["give_up_after"] < 0:
        raise origin.error(
            "give_up_after",
            f"give_up_after must not be negative, not {settings['give_up_after']}",
        )
    for key in ("idle_exit", "walltime"):
        if settings.get(key) is not None and settings[key] <= 0:
            raise origin.error(key, f"{key} must be positive, not {settings[key]}")
    written = settings.get("log_level", "INFO")
    level = written.upper()
    if level not in _LOG_LEVELS:
        raise origin.error(
            "log_level",
            f"log_level {written!r} is not one of {', '.join(_LOG_LEVELS)}",
            f"log level {level!r} is not one of {', '.join(_LOG_LEVELS)}",
        )
    settings["log_level"] = level
    return AgentConfig(**settings)


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _reactors(value: dict[str, Path] | list[str], origin: _Origin) -> dict[str, Path]:
    """``topic -> script`` from the file's table or the ``--reactor TOPIC=SCRIPT`` flags;
    every topic well formed and every script a readable file."""
    pairs: dict[str, Path] = {}
    if isinstance(value, list):  # flags, relative to the current directory
        for item in value:
            topic, sep, written = item.partition("=")
            if not sep or not written:
                raise ConfigError(f"--reactor {item!r}: expected TOPIC=SCRIPT")
            pairs[topic] = Path(written).expanduser().absolute()
    else:
        pairs = {topic: script.absolute() for topic, script in value.items()}
    for topic, script in pairs.items():
        problem = topic_problem(topic)
        if problem:
            raise origin.error("reactors", f"reactors: {problem}", f"--reactor: {problem}")
        if not script.is_file() or not os.access(script, os.R_OK):
            raise origin.error(
                "reactors",
                f"reactors.{topic}: {script} is not a readable file",
                f"--reactor {topic}: {script} is not a readable file",
            )
    return pairs


def _check_xmpp(settings: dict[str, Any], origin: _Origin) -> None:
    """XMPP mode needs an account, controllers to obey, a trusted key, and TLS off loopback.

    A required setting that is missing is named as a key, after the file, when ``xmpp = true``
    came from the file, and as a flag otherwise. Fills the default that depends on the mode:
    the name (the JID).
    """
    jid = settings.get("jid")
    if jid is None:
        raise origin.error(
            "xmpp",
            "jid is required (the agent's bare JID, like agent-1@wfe.example.org)",
            "xmpp: --jid is required (the agent's bare JID, like agent-1@wfe.example.org)",
        )
    if not is_bare_jid(jid):
        raise origin.error(
            "jid",
            f"jid must be a bare JID like agent-1@wfe.example.org, not {jid!r}",
            f"xmpp: --jid must be a bare JID like agent-1@wfe.example.org, not {jid!r}",
        )
    settings["jid"] = jid = jid.lower()
    if settings.get("socket") is not None:
        socket_file, xmpp_file = (origin.from_file.get(k) for k in ("socket", "xmpp"))
        raise ConfigError(
            (f"{socket_file or xmpp_file}: " if socket_file or xmpp_file else "")
            + f"give either {'socket' if socket_file else '--socket'} (local transport)"
            + f" or {'xmpp = true' if xmpp_file else '--xmpp'}, not both"
        )
    if settings.get("password_file") is None:
        raise origin.error(
            "xmpp",
            "password_file is required (a file holding the JID's password)",
            "xmpp: --password-file is required (a file holding the JID's password)",
        )
    controllers = tuple(c.lower() for c in settings.get("controllers", ()))
    if not controllers:
        raise origin.error(
            "controllers" if "controllers" in settings else "xmpp",
            "controllers must list at least one controller JID to obey",
            "xmpp: give at least one --controller JID (controllers = [...]) to obey",
        )
    for controller in controllers:
        if not is_bare_jid(controller):
            raise origin.error(
                "controllers",
                f"controllers: {controller!r} is not a bare JID",
                f"xmpp: controller {controller!r} is not a bare JID",
            )
    settings["controllers"] = controllers
    if settings.get("trusted_key") is None:
        raise origin.error(
            "xmpp",
            "trusted_key is required (the engine's public key, engine.pub)",
            "xmpp: --trusted-key is required (the engine's public key, engine.pub)",
        )
    tls = settings.get("tls", "starttls")
    if tls not in ("starttls", "plain"):
        raise origin.error("tls", f'tls must be "starttls" or "plain", not {tls!r}')
    host = settings.get("server") or jid.rpartition("@")[2]
    if tls == "plain" and not is_loopback(host):
        raise origin.error(
            "tls",
            f'tls = "plain" is allowed only with a loopback server, not {host!r}: use starttls',
            f"xmpp: tls plain is allowed only with a loopback server, not {host!r}: use starttls",
        )
    port = settings.get("port", 5222)
    if not 0 < port <= 65535:
        raise origin.error(
            "port",
            f"port must be between 1 and 65535, not {port}",
            f"xmpp: port must be between 1 and 65535, not {port}",
        )
    max_stanza = settings.get("max_stanza", MIN_MAX_STANZA)
    if max_stanza < MIN_MAX_STANZA:
        raise origin.error(
            "max_stanza",
            f"max_stanza must be at least {MIN_MAX_STANZA} bytes, not {max_stanza}",
            f"xmpp: max_stanza must be at least {MIN_MAX_STANZA} bytes, not {max_stanza}",
        )
    age = settings.get("max_dispatch_age", 0)
    if age < 0:
        raise origin.error(
            "max_dispatch_age",
            f"max_dispatch_age must not be negative, not {age}",
            f"xmpp: max_dispatch_age must not be negative, not {age}",
        )
    settings.setdefault("name", jid)
