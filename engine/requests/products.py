"""Products: what a job's result reports becomes product records; and their provenance.

A product is a file a stage's job made, as its RScript reported it in the result
(``wfe.rscripts.results``: path, type, size, sha256, metadata). The record links it to the job
and batch that made it, the inputs the batch held (catalog entries or upstream products)
and the sha256 of the expanded definition the request ran. ``provenance`` follows those
links back to the raw catalog entries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import attrs

from wfe.engine.requests.errors import UnknownProduct
from wfe.rscripts.results import Product, check_result

PRODUCT_COLUMNS = "id, request, stage, batch, job, path, type, size, sha256, metadata, inputs, definition, created_at"
_KEYS = tuple(c.strip() for c in PRODUCT_COLUMNS.split(","))


def from_result(result: Any, *, script: str, output_dir: str | None) -> list[Product]:
    """The products a job's result reports, checked against the result schema.

    A relative path is taken relative to ``output_dir`` (the working directory of the job
    is gone by now). Raises ``ResultError`` naming the script and the JSON path.
    """
    if result is None:
        return []
    checked = check_result(result, script=script)
    products = []
    for p in checked.products:
        path = p.path
        if not os.path.isabs(path) and output_dir is not None:
            path = os.path.join(output_dir, path)
        products.append(attrs.evolve(p, path=os.path.normpath(path)))
    return products


def _row(row: Any) -> dict[str, Any]:
    record = dict(zip(_KEYS, row, strict=True))
    record["metadata"] = json.loads(record["metadata"])
    record["inputs"] = json.loads(record["inputs"])
    return record


def list_products(rid: str) -> Callable[[Any], list[dict[str, Any]]]:
    """Read: the products of request ``rid`` in the order they were made."""

    def fn(conn: Any) -> list[dict[str, Any]]:
        rows = conn.execute(
            f"SELECT {PRODUCT_COLUMNS} FROM products WHERE request = ? ORDER BY id", (rid,)
        ).fetchall()
        return [_row(r) for r in rows]

    return fn


def provenance(product_id: str) -> Callable[[Any], dict[str, Any]]:
    """Read: the product with the job that made it, the request and definition, and its
    inputs, each an upstream product (with its own provenance) or a catalog entry.
    Raises ``UnknownProduct``."""

    def fn(conn: Any) -> dict[str, Any]:
        if _product(conn, product_id) is None:
            raise UnknownProduct(f"no product {product_id} (see `wfe products REQUEST`)")
        return _chain(conn, product_id, set())

    return fn


def _product(conn: Any, product_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ?", (product_id,)
    ).fetchone()
    return None if row is None else _row(row)


def _chain(conn: Any, product_id: str, seen: set[str]) -> dict[str, Any]:
    product = _product(conn, product_id)
    if product is None:
        return {"kind": "product", "id": product_id, "missing": True}
    seen.add(product_id)
    job = conn.execute(
        "SELECT j.name, j.state, a.attempt, a.agent FROM jobs j"
        " LEFT JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempts WHERE j.id = ?",
        (product["job"],),
    ).fetchone()
    definition = conn.execute(
        "SELECT name, git FROM definitions WHERE sha256 = ?", (product["definition"],)
    ).fetchone()
    inputs = []
    for key in product["inputs"]:
        kind, _, ref = key.partition(":")
        if kind == "product" and ref not in seen:
            inputs.append(_chain(conn, ref, seen))
        elif kind == "catalog":
            entry = conn.execute(
                "SELECT size, sha256, metadata FROM catalog WHERE path = ?", (ref,)
            ).fetchone()
            item: dict[str, Any] = {"kind": "catalog", "path": ref}
            if entry is not None:
                item.update(size=entry[0], sha256=entry[1], metadata=json.loads(entry[2]))
            else:
                item["missing"] = True
            inputs.append(item)
        else:
            inputs.append({"kind": kind, "ref": ref or key})
    return {
        "kind": "product",
        **product,
        "made_by": {
            "job": product["job"],
            "rscript": job[0] if job else None,
            "state": job[1] if job else None,
            "attempt": job[2] if job else None,
            "agent": job[3] if job else None,
        },
        "definition_name": definition[0] if definition else None,
        "git": json.loads(definition[1]) if definition and definition[1] else None,
        "from": inputs,
    }


def render_provenance(chain: dict[str, Any], indent: str = "", definition: str = "") -> list[str]:
    """The chain as indented lines for the terminal, the product first, raw inputs last.
    The definition is named where it differs from the one of the product made from it."""
    if chain.get("kind") == "catalog":
        if chain.get("missing"):
            return [f"{indent}raw {chain['path']} (no longer in the catalog)"]
        return [
            f"{indent}raw {chain['path']} ({chain.get('size')} B, sha256 {chain['sha256'][:12]}…)"
        ]
    if chain.get("kind") != "product":
        return [f"{indent}{chain.get('kind')} {chain.get('ref', '')}".rstrip()]
    if chain.get("missing"):
        return [f"{indent}product {chain['id']} (missing)"]
    made = chain["made_by"]
    lines = [
        f"{indent}{chain['id']} {chain['type']} {chain['path']} ({chain['size']} B, sha256 {chain['sha256'][:12]}…)",
        f"{indent}  made by job {made['job']} ({made['rscript']}, attempt {made['attempt']}, agent {made['agent']})"
        f" in stage {chain['stage']} of {chain['request']}",
    ]
    if chain["definition"] != definition:
        git = chain.get("git")
        lines.append(
            f"{indent}  definition {chain['definition_name']} sha256 {chain['definition']}"
            + (
                f" (git {git['commit'][:12]} {git['path']}{' dirty' if git['dirty'] else ''})"
                if git
                else ""
            )
        )
    if chain["from"]:
        lines.append(f"{indent}  from:")
        for item in chain["from"]:
            lines += render_provenance(item, indent + "    ", chain["definition"])
    return lines
