#!/usr/bin/env python3
# wfe-rscript: 1
# name: checksum
# version: 1.0
# interpreter: python3
# description: size and checksum of a file, reported as a product with its sha256
# timeout: 3600
# param path: path (required) the file to checksum
# param algorithm: str = "sha256" one of sha256, sha512, sha1, md5 (sha256 is always reported too)
# param type: str = "science" the product type: science, qa, plot or log
# requires: cpus=1

"""Checksum one file; params come as JSON from $WFE_PARAMS or stdin (python3 stdlib only)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

ALGORITHMS = ("sha256", "sha512", "sha1", "md5")
PRODUCT_TYPES = ("science", "qa", "plot", "log")


def load_params() -> dict[str, Any]:
    """The params object from the file at $WFE_PARAMS, or from stdin ({} when empty)."""
    if os.environ.get("WFE_PARAMS"):
        with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
            params = json.load(f)
    else:
        text = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
        params = json.loads(text) if text.strip() else {}
    if not isinstance(params, dict):
        sys.exit(f"checksum: params must be a JSON object, got {type(params).__name__}")
    return params


def fail(message: str) -> int:
    print(f"checksum: {message}", file=sys.stderr)
    return 2


def main() -> int:
    params = load_params()
    path = params.get("path")
    algorithm = params.get("algorithm", "sha256")
    ptype = params.get("type", "science")
    if not isinstance(path, str) or not path:
        return fail("parameter 'path' is required")
    if algorithm not in ALGORITHMS:
        return fail(f"unknown algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    if ptype not in PRODUCT_TYPES:
        return fail(f"unknown product type {ptype!r} (known: {', '.join(PRODUCT_TYPES)})")
    sha256 = hashlib.sha256()
    other = hashlib.new(algorithm)
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
                sha256.update(chunk)
                other.update(chunk)
    except OSError as exc:
        return fail(f"can't read {path}: {exc.strerror or exc}")
    digest = other.hexdigest()
    print(f"{digest}  {path}")
    result = {
        "results": {"path": path, "size": size, "algorithm": algorithm, "digest": digest},
        "products": [{"path": path, "type": ptype, "size": size, "sha256": sha256.hexdigest()}],
    }
    if os.environ.get("WFE_RESULT"):
        with open(os.environ["WFE_RESULT"], "w", encoding="utf-8") as f:
            json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
