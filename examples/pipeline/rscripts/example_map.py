#!/usr/bin/env python3
# wfe-rscript: 1
# name: example_map
# version: 1.0
# interpreter: python3
# description: co-add grids into a map with a PGM picture (example pipeline)
# timeout: 300
# param inputs: list (required) grid files: [{"path": "...", "metadata": {...}}, ...] or paths
# param title: str = "map" a title recorded in the map
# param output_dir: path where to write the outputs (the engine gives each job one); default: $WFE_OUTPUT_DIR or the working directory
# requires: cpus=1

"""Co-add every input grid into ``map_<digest>.json`` (science) and ``map_<digest>.pgm``
(plot, a plain-text greyscale picture), and report the brightest cell.

Params are JSON in the file named by $WFE_PARAMS (or on stdin); outputs go to
$WFE_OUTPUT_DIR (or the working directory); the result goes to $WFE_RESULT. Standard
library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

NAME = "example_map"


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
    title = str(params.get("title", "map"))
    out = Path(params.get("output_dir") or os.environ.get("WFE_OUTPUT_DIR") or ".")
    out.mkdir(parents=True, exist_ok=True)
    inputs = inputs_of(params)
    cells: dict[tuple[int, int], list[float]] = {}
    cell = None
    runs: set[int] = set()
    for path, meta in inputs:
        try:
            grid = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"{NAME}: can't read {path}: {exc}", file=sys.stderr)
            return 2
        if cell is None:
            cell = grid["cell"]
        elif grid["cell"] != cell:
            print(f"{NAME}: {path} has cell {grid['cell']}, others {cell}", file=sys.stderr)
            return 2
        for i, j, total, n in grid["cells"]:
            acc = cells.setdefault((i, j), [0.0, 0])
            acc[0] += total
            acc[1] += n
        runs.update(meta.get("runs", []))
    assert cell is not None
    pixels = {key: total / n for key, (total, n) in cells.items() if n}
    (pi, pj), peak = max(pixels.items(), key=lambda item: item[1])
    peak_at = {"ra": (pi + 0.5) * cell, "dec": (pj + 0.5) * cell, "value": peak}
    names = sorted(str(path.resolve()) for path, _ in inputs)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
    data = {
        "title": title,
        "cell": cell,
        "pixels": [[i, j, v] for (i, j), v in sorted(pixels.items())],
        "peak": peak_at,
    }
    map_path = out / f"map_{digest}.json"
    map_path.write_text(json.dumps(data) + "\n", encoding="utf-8")
    picture = out / f"map_{digest}.pgm"
    picture.write_text(pgm(pixels, peak), encoding="ascii")
    meta = {"kind": "map", "title": title, "cell": cell, "runs": sorted(runs), "peak": peak_at}
    print(
        f"map of {len(inputs)} grids: peak {peak:.1f} at ra {peak_at['ra']}, dec {peak_at['dec']}"
    )
    write_result(
        {
            "results": {"peak": peak_at},
            "metrics": {"inputs": len(inputs), "pixels": len(pixels), "peak": peak},
            "products": [
                product(map_path, "science", meta),
                product(picture, "plot", {"kind": "map-picture", "title": title}),
            ],
        }
    )
    return 0


def pgm(pixels: dict[tuple[int, int], float], peak: float) -> str:
    """A plain PGM (P2) picture of the map, north up, empty cells black."""
    lo_i, hi_i = min(i for i, _ in pixels), max(i for i, _ in pixels)
    lo_j, hi_j = min(j for _, j in pixels), max(j for _, j in pixels)
    low = min(pixels.values())
    span = (peak - low) or 1.0
    rows = []
    for j in range(hi_j, lo_j - 1, -1):
        row = []
        for i in range(lo_i, hi_i + 1):
            value = pixels.get((i, j))
            row.append("0" if value is None else str(1 + round(254 * (value - low) / span)))
        rows.append(" ".join(row))
    width, height = hi_i - lo_i + 1, hi_j - lo_j + 1
    return f"P2\n{width} {height}\n255\n" + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
