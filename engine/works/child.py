"""The child process in which a pull worker runs its works' function.

``python -m wfe.engine.works.child module.function FD`` imports the function once, then for
each line on its standard input (a work's parameters, as JSON) calls the function with them
as keyword arguments and writes one line to the file descriptor FD (a pipe to the worker):
``{"ok": true, "results": ..., "products": [...], "plots": [...]}`` or ``{"ok": false,
"error": "<one line>", "traceback": "..."}``. Its standard output and error are the worker's,
so what the function prints shows there. The function's return follows the CHIME/FRB pipeline
interface: a tuple ``(results, products, plots)``; a dict alone is the results; any other JSON
value is the results as it is.

Kept apart from the worker so that a function that hangs, leaks or crashes the interpreter
takes only this process with it: the worker kills it at a work's timeout and starts another
for the next work. Importing the function once (not per work) is what makes a worker fast
(``docs/performance.md``, work queue).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any


def resolve(spec: str) -> Callable[..., Any]:
    """``"package.module.function"`` -> the function. Raises ``ImportError`` /
    ``AttributeError`` / ``TypeError`` with a one-line reason."""
    module_name, _, name = spec.rpartition(".")
    if not module_name or not name:
        raise ImportError(f"{spec!r} is not module.function")
    module = importlib.import_module(module_name)
    function = getattr(module, name)
    if not callable(function):
        raise TypeError(f"{spec} is not callable")
    return function  # type: ignore[no-any-return]


def shape(value: Any) -> dict[str, Any]:
    """What a function returned, as the work's results, products and plots."""
    if isinstance(value, tuple) and len(value) == 3:
        results, products, plots = value
        for name, paths in (("products", products), ("plots", plots)):
            if paths is not None and not (
                isinstance(paths, list) and all(isinstance(p, str) for p in paths)
            ):
                raise TypeError(f"the returned {name} must be a list of paths")
        return {  # absolute: the engine archives them (wfe.engine.works.archive)
            "results": results,
            "products": None if products is None else [os.path.abspath(x) for x in products],
            "plots": None if plots is None else [os.path.abspath(x) for x in plots],
        }
    return {"results": value, "products": None, "plots": None}


def call(function: Callable[..., Any], parameters: Any) -> dict[str, Any]:
    """Call ``function`` with ``parameters``; return the outcome as the worker reads it."""
    try:
        outcome = {"ok": True, **shape(function(**(parameters or {})))}
    except Exception as exc:
        return _failed(exc)
    try:
        json.dumps(outcome, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return _failed(TypeError(f"the function's return value is not JSON: {exc}"))
    return outcome


def run(spec: str, parameters: Any) -> dict[str, Any]:
    """Import ``spec`` and call it once (what a worker's child does for one work)."""
    try:
        function = resolve(spec)
    except Exception as exc:
        return _failed(exc)
    return call(function, parameters)


def _failed(exc: Exception) -> dict[str, Any]:
    return {
        "ok": False,
        "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
        "traceback": "".join(traceback.format_exception(exc)),
    }


def die_with_parent(parent: int) -> None:
    """Be killed when the worker that started us dies (Linux), so that a work is never run
    on by an orphan once its lease has gone to another worker; exit if it is gone already."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the worker's own kill at the timeout still applies
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str]) -> int:
    spec, fd = argv
    parent = os.environ.get("WFE_WORKER_PID")
    if parent is not None:
        die_with_parent(int(parent))
    try:
        function: Callable[..., Any] | None = resolve(spec)
        failure: dict[str, Any] = {}
    except Exception as exc:  # every work then fails with why
        function, failure = None, _failed(exc)
    with os.fdopen(int(fd), "w", encoding="utf-8") as out:
        for line in sys.stdin:
            outcome = failure if function is None else call(function, json.loads(line))
            out.write(json.dumps(outcome) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, "")  # the worker's directory: ``wfe work run P mymodule.add`` finds it
    sys.exit(main(sys.argv[1:]))
