"""Load actions from folders of tasklet files.

An action ``<domain>.<action>`` is the folder ``<root>/<domain>/<action>/``; each ``*.py`` file
in it is a tasklet::

    __tags__ = ("demo",)        # optional
    __priority__ = 10           # optional, lower runs first (default 50; ties by file name)
    __params__ = {"n": int}     # optional: the action's parameters and their types; when any
                                # tasklet declares some, others are refused before a job exists

    def match(ctx, params):     # optional: run this tasklet only when it returns true
        return True

    async def main(ctx, params):
        ...

Running an action runs every matching tasklet in priority order with one shared ``params``.
Roots are searched in order; the first that has the action's folder provides it.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from wfe.engine.errors import EngineError, TaskletError, UnknownAction

SHIPPED_ACTIONS = Path(__file__).parent.parent / "shipped_actions"
_PARAM_TYPES = (int, float, str, bool, list, dict)


class ParamTypeError(EngineError, ValueError):
    """An action was given a parameter it does not declare, or of the wrong type."""


_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


@attrs.frozen(kw_only=True)
class Tasklet:
    """One loaded tasklet file."""

    name: str  # "<action>/<file stem>", shown in logs and watchdog reports
    path: Path
    priority: int
    tags: tuple[str, ...]
    main: Callable[[Any, dict[str, Any]], Awaitable[Any]]
    match: Callable[[Any, dict[str, Any]], bool] | None = None
    params: dict[str, type] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class Action:
    """An action and its tasklets, in the order they run."""

    name: str
    folder: Path
    tasklets: tuple[Tasklet, ...]
    params: dict[str, type] = attrs.Factory(dict)  # declared by tasklets' ``__params__``

    def check_params(self, params: dict[str, Any]) -> None:
        """Refuse parameters of the wrong type, or unknown ones when any are declared.

        Raises ``ParamTypeError`` with one line naming the action and the parameter.
        """
        if not self.params:
            return
        for key, value in params.items():
            expected = self.params.get(key)
            if expected is None:
                known = ", ".join(sorted(self.params))
                raise ParamTypeError(
                    f"action {self.name}: unknown parameter {key!r} (known: {known})"
                )
            ok = isinstance(value, expected) and not (
                isinstance(value, bool) and expected is not bool
            )
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ParamTypeError(
                    f"action {self.name}: parameter {key!r} must be {expected.__name__}, got {type(value).__name__}"
                )


class ActionLibrary:
    """Finds and loads actions from a list of root folders (shipped actions last)."""

    def __init__(self, roots: Sequence[Path] = ()) -> None:
        self.roots = [*map(Path, roots), SHIPPED_ACTIONS]
        self._cache: dict[str, Action] = {}

    def get(self, name: str) -> Action:
        """Return the action ``name``, loading it on first use.

        Raises ``UnknownAction`` if no root has it and ``TaskletError`` if one of its files
        cannot be loaded; nothing is cached in either case.
        """
        if name in self._cache:
            return self._cache[name]
        if not _NAME.match(name):
            raise UnknownAction(
                f"bad action name {name!r}: expected <domain>.<action>, e.g. demo.survey"
            )
        domain, action = name.split(".")
        for root in self.roots:
            folder = root / domain / action
            if folder.is_dir():
                tasklets = _load_folder(name, folder)
                declared: dict[str, type] = {}
                for t in tasklets:
                    declared.update(t.params)
                loaded = Action(name=name, folder=folder, tasklets=tasklets, params=declared)
                self._cache[name] = loaded
                return loaded
        known = ", ".join(self.names()) or "none"
        raise UnknownAction(f"unknown action {name!r} (known: {known})")

    def names(self) -> list[str]:
        """Every action name found in the roots, sorted."""
        found: set[str] = set()
        for root in self.roots:
            if not root.is_dir():
                continue
            for folder in root.glob("*/*"):
                name = f"{folder.parent.name}.{folder.name}"
                if folder.is_dir() and _NAME.match(name) and any(folder.glob("*.py")):
                    found.add(name)
        return sorted(found)


def _load_folder(action: str, folder: Path) -> tuple[Tasklet, ...]:
    files = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    if not files:
        raise TaskletError(f"action {action}: folder {folder} has no tasklet files")
    tasklets = [_load_file(action, path) for path in files]
    return tuple(sorted(tasklets, key=lambda t: (t.priority, t.path.name)))


def _load_file(action: str, path: Path) -> Tasklet:
    module_name = f"wfe_tasklets.{action}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskletError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise TaskletError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        raise TaskletError(f"{path}: failed to load: {type(exc).__name__}: {exc}") from None
    sys.modules.pop(module_name, None)
    main = getattr(module, "main", None)
    if main is None or not inspect.iscoroutinefunction(main):
        raise TaskletError(f"{path}: a tasklet needs `async def main(ctx, params)`")
    match = getattr(module, "match", None)
    if match is not None and not callable(match):
        raise TaskletError(f"{path}: `match` must be a function (ctx, params) -> bool")
    priority = getattr(module, "__priority__", 50)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TaskletError(f"{path}: __priority__ must be an integer")
    tags = getattr(module, "__tags__", ())
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise TaskletError(f"{path}: __tags__ must be a tuple of strings")
    declared = getattr(module, "__params__", {})
    if not isinstance(declared, dict) or not all(
        isinstance(k, str) and v in _PARAM_TYPES for k, v in declared.items()
    ):
        raise TaskletError(
            f"{path}: __params__ must map names to one of int, float, str, bool, list, dict"
        )
    return Tasklet(
        params=dict(declared),
        name=f"{action}/{path.stem}",
        path=path,
        priority=priority,
        tags=tuple(tags),
        main=main,
        match=match,
    )
