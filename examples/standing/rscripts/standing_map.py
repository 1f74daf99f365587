#!/usr/bin/env python3
# wfe-rscript: 1
# name: standing_map
# version: 1.0
# interpreter: python3
# description: combine the calibrated files of one field into map_<field>.txt (standing example)
# timeout: 120
# param inputs: list (required) calibrated files of one field (the stage groups by field)
# param output_dir: path where to write the map
# requires: cpus=1

"""Average every calibrated file of a field, sample by sample, into one map. Standard
library only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def main() -> int:
    with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
        params = json.load(f)
    out = Path(params.get("output_dir") or ".")
    out.mkdir(parents=True, exist_ok=True)
    columns = [
        [float(x) for x in Path(item["path"]).read_text().split()] for item in params["inputs"]
    ]
    field = params["inputs"][0]["metadata"].get("field") or "all"
    mean = [sum(values) / len(values) for values in zip(*columns, strict=False)]
    target = out / f"map_{field}.txt"
    target.write_text(f"# {len(columns)} files\n" + "".join(f"{x:.3f}\n" for x in mean))
    data = target.read_bytes()
    product = {
        "path": str(target.resolve()),
        "type": "science",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": {"field": field, "files": len(columns)},
    }
    Path(os.environ["WFE_RESULT"]).write_text(json.dumps({"products": [product]}))
    print(f"standing_map: field {field} from {len(columns)} file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
