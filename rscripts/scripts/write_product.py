#!/usr/bin/env python3
# wfe-rscript: 1
# name: write_product
# version: 1.0
# interpreter: python3
# description: write a file with given content or size and report it as a product with its sha256
# timeout: 600
# param name: str = "product.dat" file name, relative to output_dir (no '..', not absolute)
# param content: str text to write (UTF-8); give this or size
# param size: int bytes of a repeating pattern to write when content is not given
# param output_dir: path directory to write in (made if missing); default: the working directory
# param type: str = "science" the product type: science, qa, plot or log
# param metadata: dict = {} attached to the product as is
# requires: cpus=1

"""Make one product file; params come as JSON from $WFE_PARAMS or stdin (python3 stdlib only).

The product path in the result is relative to the working directory when no output_dir is
given, and absolute otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

PRODUCT_TYPES = ("science", "qa", "plot", "log")
PATTERN = bytes(range(256))


def load_params() -> dict[str, Any]:
    """The params object from the file at $WFE_PARAMS, or from stdin ({} when empty)."""
    if os.environ.get("WFE_PARAMS"):
        with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
            params = json.load(f)
    else:
        text = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
        params = json.loads(text) if text.strip() else {}
    if not isinstance(params, dict):
        sys.exit(f"write_product: params must be a JSON object, got {type(params).__name__}")
    return params


def fail(message: str) -> int:
    print(f"write_product: {message}", file=sys.stderr)
    return 2


def main() -> int:
    params = load_params()
    name = params.get("name", "product.dat")
    content = params.get("content")
    size = params.get("size")
    ptype = params.get("type", "science")
    metadata = params.get("metadata", {})
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in name.split("/"):
        return fail(f"parameter 'name' must be a relative path without '..', got {name!r}")
    if (content is None) == (size is None):
        return fail("give exactly one of the parameters 'content' and 'size'")
    if size is not None and (type(size) is not int or size < 0):
        return fail(f"parameter 'size' must be an int >= 0, got {size!r}")
    if ptype not in PRODUCT_TYPES:
        return fail(f"unknown product type {ptype!r} (known: {', '.join(PRODUCT_TYPES)})")
    if not isinstance(metadata, dict):
        return fail("parameter 'metadata' must be an object")
    output_dir = params.get("output_dir")
    path = name if output_dir is None else os.path.abspath(os.path.join(output_dir, name))
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    with open(path, "wb") as f:
        if content is not None:
            data = content.encode("utf-8")
            f.write(data)
            digest.update(data)
            written = len(data)
        elif size is not None:
            while written < size:
                block = (PATTERN * 256)[: size - written]
                f.write(block)
                digest.update(block)
                written += len(block)
    product = {"path": path, "type": ptype, "size": written, "sha256": digest.hexdigest()}
    if metadata:
        product["metadata"] = metadata
    print(f"{product['sha256']}  {path}")
    if os.environ.get("WFE_RESULT"):
        with open(os.environ["WFE_RESULT"], "w", encoding="utf-8") as f:
            json.dump({"results": {"path": path, "size": written}, "products": [product]}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
