#!/usr/bin/env python3
# wfe-rscript: 1
# name: example_grid
# version: 1.0
# interpreter: python3
# description: bin calibrated timestreams into sky cells (example pipeline)
# timeout: 300
# param inputs: list (required) calibrated files: [{"path": "...", "metadata": {...}}, ...] or paths
# param cell: float = 0.25 cell size in degrees
# param output_dir: path where to write the outputs (the engine gives each job one); default: $WFE_OUTPUT_DIR or the working directory
# requires: cpus=1

"""Bin the unflagged samples of all inputs into one ``grid_<digest>.json`` (science).

The grid holds, per cell (i, j) = (floor(ra / cell), floor(dec / cell)), the sum of the
values and the number of samples, so grids of different jobs co-add exactly. Params are
JSON in the file named by $WFE_PARAMS (or on stdin); outputs go to $WFE_OUTPUT_DIR (or the
working directory); the result goes to $WFE_RESULT. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

NAME = "example_grid"


def load_params() -> dict[str, Any]:
    """The params object from the file at $WFE_PARAMS, or from stdin."""
    if os.environ.get("WFE_PARAMS"):
        with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
            params = json.load(f)
    else:
        params = json.loads(sys.stdin.read() or "{}")
    if not isinstance(params, dict):
        raise SystemExit(f"{NAME}: params must be a JSON object")
    return params


def inputs_of(params: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    """``params["inputs"]`` as (path, metadata) pairs; plain strings are paths."""
    items = params.get("inputs")
    if not isinstance(items, list) or not items:
        raise SystemExit(f"{NAME}: parameter 'inputs' must be a non-empty list")
    result = []
    for item in items:
        if isinstance(item, str):
            result.append((Path(item), {}))
        elif isinstance(item, dict) and isinstance(item.get("path"), str):
            result.append((Path(item["path"]), dict(item.get("metadata") or {})))
        else:
            raise SystemExit(f"{NAME}: bad input {item!r}: expected a path or {{'path': ...}}")
    return result


def product(path: Path, kind: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """The result entry of one output file."""
    data = path.read_bytes()
    return {
        "path": str(path.resolve()),
        "type": kind,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": metadata,
    }


def write_result(result: dict[str, Any]) -> None:
    """Write the result JSON to $WFE_RESULT (or print it when unset)."""
    text = json.dumps(result, indent=2, sort_keys=True)
    if os.environ.get("WFE_RESULT"):
        Path(os.environ["WFE_RESULT"]).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)


def main() -> int:
    params = load_params()
    cell = float(params.get("cell", 0.25))
    if not cell > 0:
        print(f"{NAME}: cell must be positive, not {cell}", file=sys.stderr)
        return 2
    out = Path(params.get("output_dir") or os.environ.get("WFE_OUTPUT_DIR") or ".")
    out.mkdir(parents=True, exist_ok=True)
    inputs = inputs_of(params)
    cells: dict[tuple[int, int], list[float]] = {}
    runs: set[int] = set()
    detectors: set[str] = set()
    samples = 0
    for path, meta in inputs:
        if isinstance(meta.get("run"), int):
            runs.add(meta["run"])
        if isinstance(meta.get("detector"), str):
            detectors.add(meta["detector"])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            print(f"{NAME}: can't read {path}: {exc.strerror}", file=sys.stderr)
            return 2
        if not lines or lines[0] != "t,ra,dec,value,flag":
            print(f"{NAME}: {path} is not a calibrated timestream", file=sys.stderr)
            return 2
        for line in lines[1:]:
            _, ra, dec, value, flag = line.split(",")
            if flag == "1":
                continue
            key = (math.floor(float(ra) / cell), math.floor(float(dec) / cell))
            total = cells.setdefault(key, [0.0, 0])
            total[0] += float(value)
            total[1] += 1
            samples += 1
    names = sorted(str(path.resolve()) for path, _ in inputs)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
    grid = out / f"grid_{digest}.json"
    data = {
        "cell": cell,
        "cells": [[i, j, s, int(n)] for (i, j), (s, n) in sorted(cells.items())],
        "inputs": names,
    }
    grid.write_text(json.dumps(data) + "\n", encoding="utf-8")
    meta = {
        "kind": "grid",
        "cell": cell,
        "runs": sorted(runs),
        "detectors": sorted(detectors),
        "samples": samples,
    }
    print(f"gridded {len(inputs)} files, {samples} samples into {len(cells)} cells")
    write_result(
        {
            "results": {"cells": len(cells)},
            "metrics": {"inputs": len(inputs), "samples": samples, "cells": len(cells)},
            "products": [product(grid, "science", meta)],
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
