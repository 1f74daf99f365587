#!/usr/bin/env python3
# wfe-rscript: 1
# name: console_work
# version: 1.0
# interpreter: python3
# description: console tests: prints numbered lines over time, optionally waiting on a gate file first
# timeout: 60
# param inputs: list = [] the request's inputs ({"path": ..., "metadata": {...}})
# param output_dir: path = "." where products would go (none are made)
# param lines: int = 3 how many lines to print
# param seconds: float = 0.0 pause after each line
# param gate: str = "" a file path: after the first line, wait until it exists
# requires: cpus=1

"""Print ``lines`` numbered lines, ``seconds`` apart; with ``gate``, hold after line 1."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
        params = json.load(f)
    inputs = params.get("inputs") or []
    for i in range(1, int(params.get("lines", 3)) + 1):
        print(
            f"console_work line {i} of {params.get('lines', 3)} ({len(inputs)} inputs)", flush=True
        )
        if i == 1 and params.get("gate"):
            while not os.path.exists(params["gate"]):
                time.sleep(0.02)  # the test opens the gate
        time.sleep(float(params.get("seconds", 0.0)))
    if os.environ.get("WFE_RESULT"):
        Path(os.environ["WFE_RESULT"]).write_text(json.dumps({"metrics": {"inputs": len(inputs)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
