"""The result a script writes to ``$WFE_RESULT``: its schema and the check that enforces it.

A result is a JSON object with three optional keys and nothing else::

    {"results": {...},                       # free-form JSON object
     "metrics": {"rows": 120, "rate": 3.5},  # name -> finite number
     "products": [{"path": "out/a.fits", "type": "science", "size": 2880,
                   "sha256": "<64 lowercase hex>", "metadata": {...}}]}

A product's ``path`` is relative to the script's working directory, or absolute; ``type``
is one of ``PRODUCT_TYPES``; ``metadata`` is optional. Pure code: no file I/O.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

import attrs

from wfe.rscripts.errors import ResultError

PRODUCT_TYPES: Final = ("science", "qa", "plot", "log")
_SHA256: Final = re.compile(r"[0-9a-f]{64}", re.ASCII)
_TOP_KEYS: Final = ("metrics", "products", "results")
_PRODUCT_KEYS: Final = ("from", "metadata", "path", "sha256", "size", "type")


@attrs.frozen(kw_only=True)
class Product:
    """A file a script made, with its checksum."""

    path: str
    type: str  # one of PRODUCT_TYPES
    size: int  # bytes
    sha256: str  # lowercase hex
    metadata: dict[str, Any] = attrs.field(factory=dict)
    # Which of the job's inputs (their paths) it was made from; empty: all of them.
    from_inputs: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The product as result JSON (``from`` only when the script gave it)."""
        data = {k: v for k, v in attrs.asdict(self).items() if k != "from_inputs"}
        if self.from_inputs:
            data["from"] = list(self.from_inputs)
        return data


@attrs.frozen(kw_only=True)
class ScriptResult:
    """A checked result. ``as_dict()`` gives the JSON form back."""

    results: dict[str, Any] = attrs.field(factory=dict)
    metrics: dict[str, float | int] = attrs.field(factory=dict)
    products: tuple[Product, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON data, every key present."""
        return {
            "results": self.results,
            "metrics": self.metrics,
            "products": [p.as_dict() for p in self.products],
        }


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if type(value) in (int, float):
        return "number"
    return names.get(type(value), type(value).__name__)


def check_result(data: Any, *, script: str) -> ScriptResult:
    """Check decoded result JSON against the schema.

    Raises ``ResultError`` naming the script and the JSON path: ``checksum: result
    $.products[0].sha256 must be 64 lowercase hex digits``.
    """
    if not isinstance(data, dict):
        raise ResultError(script, f"must be a JSON object, got {_kind(data)}")
    for key in data:
        if key not in _TOP_KEYS:
            raise ResultError(script, f"has unknown key {key!r} (known: {', '.join(_TOP_KEYS)})")
    results = data.get("results", {})
    if not isinstance(results, dict):
        raise ResultError(script, f"$.results must be an object, got {_kind(results)}")
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ResultError(script, f"$.metrics must be an object, got {_kind(metrics)}")
    for name, value in metrics.items():
        if _kind(value) != "number" or not math.isfinite(value):
            raise ResultError(script, f"$.metrics.{name} must be a finite number")
    products = data.get("products", [])
    if not isinstance(products, list):
        raise ResultError(script, f"$.products must be an array, got {_kind(products)}")
    return ScriptResult(
        results=results,
        metrics=metrics,
        products=tuple(
            _check_product(p, f"$.products[{i}]", script) for i, p in enumerate(products)
        ),
    )


def _check_product(data: Any, where: str, script: str) -> Product:
    if not isinstance(data, dict):
        raise ResultError(script, f"{where} must be an object, got {_kind(data)}")
    for key in _PRODUCT_KEYS:
        if key not in data and key not in ("metadata", "from"):
            raise ResultError(script, f"{where} lacks {key!r}")
    for key in data:
        if key not in _PRODUCT_KEYS:
            known = ", ".join(_PRODUCT_KEYS)
            raise ResultError(script, f"{where} has unknown key {key!r} (known: {known})")
    path, ptype, size, sha256 = data["path"], data["type"], data["size"], data["sha256"]
    metadata = data.get("metadata", {})
    if not isinstance(path, str) or not path or "\0" in path:
        raise ResultError(script, f"{where}.path must be a non-empty string")
    if ptype not in PRODUCT_TYPES:
        raise ResultError(script, f"{where}.type must be one of {', '.join(PRODUCT_TYPES)}")
    if type(size) is not int or size < 0:
        raise ResultError(script, f"{where}.size must be a non-negative integer")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ResultError(script, f"{where}.sha256 must be 64 lowercase hex digits")
    if not isinstance(metadata, dict):
        raise ResultError(script, f"{where}.metadata must be an object, got {_kind(metadata)}")
    sources = data.get("from", [])
    if not isinstance(sources, list) or not all(isinstance(x, str) and x for x in sources):
        raise ResultError(script, f"{where}.from must be an array of input paths")
    return Product(
        path=path,
        type=ptype,
        size=size,
        sha256=sha256,
        metadata=metadata,
        from_inputs=tuple(sources),
    )


def load_result(raw: bytes | str, *, script: str) -> ScriptResult:
    """Decode the text of a result file and check it; raises ``ResultError``."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ResultError(script, f"is not JSON: {reason}") from None
    return check_result(data, script=script)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
