"""The JSON result a script leaves in ``$WFE_RESULT``: read with limits, checked to travel.

The result must go to the engine in one message, and XMPP servers cap a stanza at 256 KiB by
default, so it is bounded (``MAX_RESULT_BYTES``). Whatever the script left there, reading it
never hangs (a FIFO) and never raises: a problem becomes the attempt's one-line detail.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from wfe.protocols import codec
from wfe.protocols.errors import DecodeError
from wfe.protocols.messages import JobFinished

#: Upper bound for the size of ``$WFE_RESULT``; the result must travel in one message,
#: and XMPP servers cap a stanza at 256 KiB by default.
MAX_RESULT_BYTES = 128 * 1024

RESULT_FILE = "result.json"


def read_result(directory: str) -> tuple[dict[str, Any] | None, str]:
    """The JSON object in ``directory/result.json`` and ``""``, or None and why not.

    No file is no result and no problem: ``(None, "")``.
    """
    try:  # O_NONBLOCK: a FIFO put there must not hang the agent
        fd = os.open(f"{directory}/{RESULT_FILE}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"result.json cannot be read: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "result.json is not a regular file"
        if st.st_size > MAX_RESULT_BYTES:
            size = st.st_size
            return None, f"result.json of {size} bytes exceeds the limit of {MAX_RESULT_BYTES}"
        data = os.read(fd, MAX_RESULT_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_RESULT_BYTES:  # it grew after the check
        return None, f"result.json exceeds the limit of {MAX_RESULT_BYTES} bytes"
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        return None, f"result.json is not valid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"result.json must hold a JSON object, not {_json_kind(value)}"
    return value, ""


def travel_problem(finished: JobFinished) -> str:
    """Why ``finished`` would not survive the trip to the engine, or ``""``."""
    try:
        codec.decode(codec.encode(finished))
    except (DecodeError, ValueError, RecursionError) as exc:
        return str(exc)
    return ""


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
