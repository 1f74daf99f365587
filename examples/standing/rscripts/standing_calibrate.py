#!/usr/bin/env python3
# wfe-rscript: 1
# name: standing_calibrate
# version: 1.0
# interpreter: python3
# description: calibrate each raw file (every sample times GAIN) into cal_<name>.txt (standing example)
# timeout: 120
# param inputs: list (required) raw files: [{"path": "...", "metadata": {...}}, ...]
# param output_dir: path where to write the calibrated files
# requires: cpus=1

"""Calibrate each input into ``cal_<name>.txt``; each product names its own input
(``"from"``), so provenance is per file. Standard library only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

GAIN = 1.0  # the software version under test: run.py changes this line to reprocess


def main() -> int:
    with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
        params = json.load(f)
    out = Path(params.get("output_dir") or ".")
    out.mkdir(parents=True, exist_ok=True)
    products = []
    for item in params["inputs"]:
        source = Path(item["path"])
        samples = [float(x) for x in source.read_text().split()]
        target = out / f"cal_{source.stem}.txt"
        target.write_text("".join(f"{x * GAIN:.3f}\n" for x in samples))
        data = target.read_bytes()
        products.append(
            {
                "path": str(target.resolve()),
                "type": "science",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "metadata": {"field": item["metadata"].get("field"), "gain": GAIN},
                "from": [item["path"]],
            }
        )
    Path(os.environ["WFE_RESULT"]).write_text(json.dumps({"products": products}))
    print(f"standing_calibrate: {len(products)} file(s), gain {GAIN}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
