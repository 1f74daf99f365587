#!/usr/bin/env python3
# wfe-rscript: 1
# name: bigoutput
# version: 1.0
# interpreter: python3
# description: write exactly N bytes of numbered lines to stdout or stderr (for output streaming)
# timeout: 600
# param size: int (required) how many bytes to write
# param stream: str = "stdout" stdout or stderr
# param line_length: int = 100 bytes per line, newline included (at least 11)
# requires: cpus=1

"""Write a known byte stream; the result reports its size and sha256 so a receiver can check it.

Line k (from 0) is k as 9 digits, a space, then the letter 'a'+k%26 repeated, and a newline,
``line_length`` bytes in all; the stream is cut off after ``size`` bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

BLOCK = 64 * 1024


def load_params() -> dict[str, Any]:
    """The params object from the file at $WFE_PARAMS, or from stdin ({} when empty)."""
    if os.environ.get("WFE_PARAMS"):
        with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
            params = json.load(f)
    else:
        text = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
        params = json.loads(text) if text.strip() else {}
    if not isinstance(params, dict):
        sys.exit(f"bigoutput: params must be a JSON object, got {type(params).__name__}")
    return params


def lines(line_length: int) -> Iterator[bytes]:
    k = 0
    while True:
        fill = chr(ord("a") + k % 26) * (line_length - 11)
        yield f"{k:09d} {fill}\n".encode("ascii")
        k += 1


def main() -> int:
    params = load_params()
    size = params.get("size")
    stream = params.get("stream", "stdout")
    line_length = params.get("line_length", 100)
    if type(size) is not int or size < 0:
        print(f"bigoutput: parameter 'size' must be an int >= 0, got {size!r}", file=sys.stderr)
        return 2
    if stream not in ("stdout", "stderr"):
        print(
            f"bigoutput: parameter 'stream' must be stdout or stderr, got {stream!r}",
            file=sys.stderr,
        )
        return 2
    if type(line_length) is not int or line_length < 11:
        print("bigoutput: parameter 'line_length' must be an int >= 11", file=sys.stderr)
        return 2
    out = (sys.stdout if stream == "stdout" else sys.stderr).buffer
    digest = hashlib.sha256()
    left = size
    pending = bytearray()
    for line in lines(line_length):
        if left <= 0:
            break
        pending += line[:left]
        left -= len(line)
        if len(pending) >= BLOCK or left <= 0:
            out.write(pending)
            out.flush()
            digest.update(pending)
            pending.clear()
    if os.environ.get("WFE_RESULT"):
        with open(os.environ["WFE_RESULT"], "w", encoding="utf-8") as f:
            json.dump(
                {"results": {"bytes": size, "stream": stream, "sha256": digest.hexdigest()}}, f
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
