"""The agent's settings: command-line flags over an optional ``agent.toml`` over defaults.

The TOML file holds the flags' keys at top level, with underscores
(``give_up_after = 30``, ``tags = ["gpu"]``). Relative paths in the file are taken relative
to the file's directory; relative paths given as flags, relative to the current directory.
Every problem is a ``ConfigError`` with one line naming the file or flag and the key.
"""

from __future__ import annotations

import argparse
import os
import socket
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from agents.core import DEFAULT_HEARTBEAT
from agents.errors import ConfigError


@attrs.frozen(kw_only=True)
class AgentConfig:
    """Everything ``wfe agent`` needs to start."""

    name: str
    socket: Path | None = None  # the engine's Unix socket (local transport)
    slots: int = 1
    memory: int | None = None
    site: str = "local"
    tags: tuple[str, ...] = ()
    storage: tuple[str, ...] = ()
    spool: Path
    workdir: Path
    trusted_key: Path | None = None
    heartbeat: float = DEFAULT_HEARTBEAT
    give_up_after: float | None = None
    keep_workdirs: bool = False
    log_level: str = "INFO"


#: Key -> (expected JSON-ish kind, description used in errors).
_KEYS: dict[str, tuple[type[Any], str]] = {
    "name": (str, "a string"),
    "socket": (Path, "a path string"),
    "slots": (int, "an integer"),
    "memory": (int, "an integer (bytes)"),
    "site": (str, "a string"),
    "tags": (tuple, "an array of strings"),
    "storage": (tuple, "an array of strings"),
    "spool": (Path, "a path string"),
    "workdir": (Path, "a path string"),
    "trusted_key": (Path, "a path string"),
    "heartbeat": (float, "a number (seconds)"),
    "give_up_after": (float, "a number (seconds)"),
    "keep_workdirs": (bool, "true or false"),
    "log_level": (str, "a string"),
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
    p.add_argument("--keep-workdirs", action="store_true", help="keep each attempt's directory")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    return p


def _check(where: str, key: str, value: Any, base: Path) -> Any:
    kind, description = _KEYS[key]
    ok = (
        (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (kind in (str, Path) and isinstance(value, str))
        or (kind is bool and isinstance(value, bool))
        or (kind is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value))
    )
    if not ok:
        raise ConfigError(f"{where}: {key}: expected {description}, got {value!r}")
    if kind is Path:
        return base / Path(value).expanduser()
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


def load_config(argv: Sequence[str] | None = None) -> AgentConfig:
    """Parse flags, read ``--config`` if given, apply defaults and check the values.

    Raises ``ConfigError``; argparse's own usage errors raise ``SystemExit(2)``.
    """
    args = vars(build_parser().parse_args(argv))
    settings: dict[str, Any] = {}
    config_path = args.pop("config", None)
    if config_path is not None:
        settings.update(read_config_file(config_path))
    settings.update(args)
    name = settings.setdefault("name", socket.gethostname().split(".")[0])
    if not name or any(c.isspace() for c in name):
        raise ConfigError(f"agent name {name!r} must be non-empty and contain no spaces")
    home = _state_dir() / f"agent-{name}"
    settings.setdefault("spool", home / "spool")
    settings.setdefault("workdir", home / "work")
    settings.setdefault("slots", os.cpu_count() or 1)
    settings["tags"] = tuple(settings.get("tags", ()))
    settings["storage"] = tuple(settings.get("storage", ()))
    if settings["slots"] < 1:
        raise ConfigError(f"slots must be at least 1, not {settings['slots']}")
    if settings.get("memory") is not None and settings["memory"] < 1:
        raise ConfigError(f"memory must be a positive number of bytes, not {settings['memory']}")
    if settings.get("heartbeat", DEFAULT_HEARTBEAT) <= 0:
        raise ConfigError(f"heartbeat must be positive, not {settings['heartbeat']}")
    if settings.get("give_up_after") is not None and settings["give_up_after"] < 0:
        raise ConfigError(f"give_up_after must not be negative, not {settings['give_up_after']}")
    level = settings.get("log_level", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    settings["log_level"] = level
    return AgentConfig(**settings)
