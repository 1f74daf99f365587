#!/usr/bin/env python3
# wfe-rscript: 1
# name: fail
# version: 1.0
# interpreter: python3
# description: write a message to stderr and exit with a chosen code (for failure handling)
# timeout: 60
# param exit_code: int = 1 the exit status (0-255)
# param message: str = "failing on purpose" the line written to stderr
# param stdout: str = "" text written to stdout first, if any
# requires: cpus=1

"""Fail on purpose; params come as JSON from $WFE_PARAMS or stdin. Writes no result."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def load_params() -> dict[str, Any]:
    """The params object from the file at $WFE_PARAMS, or from stdin ({} when empty)."""
    if os.environ.get("WFE_PARAMS"):
        with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
            params = json.load(f)
    else:
        text = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
        params = json.loads(text) if text.strip() else {}
    if not isinstance(params, dict):
        sys.exit(f"fail: params must be a JSON object, got {type(params).__name__}")
    return params


def main() -> int:
    params = load_params()
    code = params.get("exit_code", 1)
    if type(code) is not int or not 0 <= code <= 255:
        print(f"fail: parameter 'exit_code' must be 0-255, got {code!r}", file=sys.stderr)
        return 2
    if params.get("stdout"):
        print(params["stdout"], flush=True)
    print(params.get("message", "failing on purpose"), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
