#!/usr/bin/env python3
# wfe-rscript: 1
# name: example_calibrate
# version: 1.0
# interpreter: python3
# description: calibrate raw timestreams, (counts - offset) * gain, and flag outliers (example pipeline)
# timeout: 300
# param inputs: list (required) raw files: [{"path": "...", "metadata": {...}}, ...] or plain paths
# param gain: float = 1.0 multiply by this after subtracting the offset
# param offset: float = 0.0 subtract this from the raw counts
# param threshold: float = 5.0 flag one-sample spikes higher than this many robust sigma
# param output_dir: path where to write the outputs (the engine gives each job one); default: $WFE_OUTPUT_DIR or the working directory
# requires: cpus=1

"""Calibrate each input into ``cal_<name>.csv`` (science) and ``cal_<name>.qa.json`` (qa).

Params are JSON in the file named by $WFE_PARAMS (or on stdin); outputs go to
$WFE_OUTPUT_DIR (or the working directory); the result, listing every product with its
size and sha256, goes to $WFE_RESULT. Standard library only: an RScript travels alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

NAME = "example_calibrate"


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


def read_raw(path: Path) -> tuple[dict[str, Any], list[list[float]]]:
    """The ``# key: value`` header and the rows (t, ra, dec, counts) of a raw file."""
    header: dict[str, Any] = {}
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            value = value.strip()
            header[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
        elif line and not line.startswith("t,"):
            rows.append([float(x) for x in line.split(",")])
    return header, rows


def _neighbours(values: list[float], i: int) -> list[float]:
    return [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]


def main() -> int:
    params = load_params()
    gain = float(params.get("gain", 1.0))
    offset = float(params.get("offset", 0.0))
    threshold = float(params.get("threshold", 5.0))
    out = Path(params.get("output_dir") or os.environ.get("WFE_OUTPUT_DIR") or ".")
    out.mkdir(parents=True, exist_ok=True)
    products = []
    flagged_total = 0
    for path, given in inputs_of(params):
        try:
            header, rows = read_raw(path)
        except (OSError, ValueError) as exc:
            print(f"{NAME}: can't read {path}: {exc}", file=sys.stderr)
            return 2
        if not rows:
            print(f"{NAME}: {path} has no samples", file=sys.stderr)
            return 2
        values = [(counts - offset) * gain for _, _, _, counts in rows]
        # A glitch is a one-sample spike: compare each sample with its neighbours' mean,
        # in units of the robust spread of that difference. The sky changes smoothly.
        spikes = [v - statistics.fmean(_neighbours(values, i)) for i, v in enumerate(values)]
        median = statistics.median(spikes)
        sigma = 1.4826 * statistics.median(abs(s - median) for s in spikes) or 1e-9
        flags = [s - median > threshold * sigma for s in spikes]
        flagged = sum(flags)
        flagged_total += flagged
        cal = out / f"cal_{path.stem}.csv"
        lines = ["t,ra,dec,value,flag"]
        for (t, ra, dec, _), value, flag in zip(rows, values, flags, strict=True):
            lines.append(f"{t:.1f},{ra:.5f},{dec:.5f},{value:.4f},{int(flag)}")
        cal.write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta = {**header, **given, "kind": "calibrated", "samples": len(rows), "flagged": flagged}
        qa = out / f"cal_{path.stem}.qa.json"
        qa_data = {"input": str(path), "spike_sigma": sigma, "flagged": flagged}
        qa.write_text(json.dumps(qa_data, indent=2) + "\n", encoding="utf-8")
        products.append(product(cal, "science", meta))
        products.append(product(qa, "qa", {"kind": "calibration-qa", "input": str(path)}))
        print(f"calibrated {path.name}: {len(rows)} samples, {flagged} flagged")
    write_result(
        {
            "results": {"gain": gain, "offset": offset, "threshold": threshold},
            "metrics": {"inputs": len(products) // 2, "flagged": flagged_total},
            "products": products,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
