#!/usr/bin/env python3
# wfe-rscript: 1
# name: located
# version: 1.0
# interpreter: python3
# description: test RScript for replicas: one product per input naming the replica it was given
# timeout: 60
# param inputs: list = [] [{"path": ..., "metadata": {...}, "rse": ..., "location": ...}, ...]
# param output_dir: path where to write the products
# requires: cpus=1

"""Write ``<output_dir>/<name>.out`` for each input holding the replica it was given."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def main() -> int:
    with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
        params = json.load(f)
    out = Path(params["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    products = []
    for item in params.get("inputs") or []:
        name = Path(item["path"]).name
        given = {"rse": item.get("rse"), "location": item.get("location")}
        target = out / f"{name}.out"
        target.write_text(json.dumps(given) + "\n")
        data = target.read_bytes()
        products.append(
            {
                "path": str(target.resolve()),
                "type": "science",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "metadata": {"source": name, **given},
            }
        )
    Path(os.environ["WFE_RESULT"]).write_text(json.dumps({"products": products}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
