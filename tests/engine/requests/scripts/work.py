#!/usr/bin/env python3
# wfe-rscript: 1
# name: work
# version: 1.0
# interpreter: python3
# description: test RScript for requests: copies inputs to products, or fails, or waits on a gate
# timeout: 60
# param inputs: list = [] [{"path": ..., "metadata": {...}}, ...]; none: make `count` products
# param output_dir: path where to write the products
# param count: int = 1 how many products to make when there are no inputs
# param fail_on: str = "" exit 3 when an input's file name contains this
# param flaky: str = "" a directory: a job whose first input has no marker file there yet makes it and exits 4
# param gate: str = "" a file path: wait until it exists before doing anything
# param bad_result: bool = false write a result that breaks the result schema
# param type: str = "science" the type of the products
# param per_input: bool = false name each product's input in its "from" (per-input provenance)
# requires: cpus=1

"""Copy each input to ``<output_dir>/<name>.out`` and report it as a product."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path


def product(path: Path, kind: str, source: str) -> dict[str, object]:
    data = path.read_bytes()
    return {
        "path": str(path.resolve()),
        "type": kind,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": {"source": source},
    }


def main() -> int:
    with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
        params = json.load(f)
    if params.get("gate"):
        while not os.path.exists(params["gate"]):
            time.sleep(0.02)  # the test opens the gate
    inputs = params.get("inputs") or []
    if params.get("flaky"):
        marker = Path(params["flaky"]) / (Path(inputs[0]["path"]).name if inputs else "once")
        if not marker.exists():
            marker.write_text("tried\n")
            print(f"work: failing the first time for {marker.name}", file=sys.stderr)
            return 4
    out = Path(params.get("output_dir") or ".")
    out.mkdir(parents=True, exist_ok=True)
    kind = params.get("type", "science")
    products = []
    for item in inputs:
        source = Path(item["path"])
        if params.get("fail_on") and params["fail_on"] in source.name:
            print(f"work: refusing {source.name}", file=sys.stderr)
            return 3
        target = out / f"{source.name}.out"
        target.write_bytes(source.read_bytes() + b"#work\n")
        products.append(product(target, kind, source.name))
        if params.get("per_input"):
            products[-1]["from"] = [item["path"]]
    if not inputs:
        for i in range(params.get("count", 1)):
            target = out / f"made_{i}.txt"
            target.write_text(f"made {i}\n")
            products.append(product(target, kind, f"made_{i}"))
    result: dict[str, object] = {"products": products, "metrics": {"inputs": len(inputs)}}
    if params.get("bad_result"):
        result = {"products": [{"path": "x"}]}
    Path(os.environ["WFE_RESULT"]).write_text(json.dumps(result))
    print(f"work: {len(products)} product(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
