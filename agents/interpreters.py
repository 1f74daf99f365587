"""Which program runs a script: its ``# interpreter:`` header line, found on ``PATH``.

Both answers are remembered (a script by its sha256, a program per ``PATH``), so a job that
runs the same script again pays for neither the header scan nor the ``PATH`` search.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil

from wfe.protocols.messages import Dispatch

DEFAULT_INTERPRETER = "sh"

_INTERPRETER_LINE = re.compile(r"#\s*interpreter\s*:(?P<value>.*)")

#: Entries each cache holds before it starts afresh.
_CACHE_SIZE = 64

_interpreters: dict[tuple[str, int], tuple[str, ...]] = {}
_programs: dict[tuple[str, str | None], str] = {}


def script_interpreter(script: str) -> list[str]:
    """The command that runs ``script``, from its ``# interpreter:`` header line.

    Only the leading block of comment lines (blank lines allowed) is the header. Without
    the key the answer is ``["sh"]``. The value is split like a shell word list, so
    ``# interpreter: python3 -u`` gives ``["python3", "-u"]``. Raises ``ValueError`` on a
    value that does not split (an unclosed quote) or is empty.
    """
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        match = _INTERPRETER_LINE.fullmatch(stripped)
        if match is not None:
            command = shlex.split(match["value"])
            if not command:
                raise ValueError("the interpreter header line names no interpreter")
            return command
    return [DEFAULT_INTERPRETER]


def interpreter_of(dispatch: Dispatch) -> tuple[str, ...]:
    """``script_interpreter`` of the dispatch's script, remembered by its sha256 (which the
    agent checked) and length. Raises ``ValueError`` as it does."""
    key = (dispatch.sha256, len(dispatch.script))
    command = _interpreters.get(key)
    if command is None:
        command = tuple(script_interpreter(dispatch.script))
        if len(_interpreters) > _CACHE_SIZE:
            _interpreters.clear()
        _interpreters[key] = command
    return command


def find_program(name: str) -> str | None:
    """``shutil.which(name)``, remembered per ``PATH`` once found (a miss is not remembered)."""
    key = (name, os.environ.get("PATH"))
    program = _programs.get(key)
    if program is None:
        program = shutil.which(name)
        if program is not None:
            if len(_programs) > _CACHE_SIZE:
                _programs.clear()
            _programs[key] = program
    return program


def forget_programs() -> None:
    """Forget every program found: call it when one could not be started (it may have moved)."""
    _programs.clear()
