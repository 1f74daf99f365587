"""The ``products`` table: the files stages' jobs made, and the reads of their provenance.

A product record links a file to the job and batch that made it, the inputs the batch held
(catalog entries or upstream products, as input keys ``catalog:PATH`` / ``product:ID``) and
the sha256 of the expanded definition the request ran. Products are written when a batch is
settled (``request_batches.settle_batch``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from wfe.engine.repository import catalog
from wfe.engine.repository.rowtypes import Conn, JsonObject, JsonValue, Row
from wfe.engine.requests.errors import UnknownProduct

PRODUCT_COLUMNS = (
    "id, request, stage, batch, job, path, type, size, sha256, metadata, inputs, definition,"
    " created_at, version, stale, intermediate, purged_at"
)
_KEYS = tuple(c.strip() for c in PRODUCT_COLUMNS.split(","))


def _row(row: Row) -> JsonObject:
    record: JsonObject = dict(zip(_KEYS, row, strict=True))
    record["metadata"] = json.loads(row[_KEYS.index("metadata")])
    record["inputs"] = json.loads(row[_KEYS.index("inputs")])
    record["intermediate"] = bool(row[_KEYS.index("intermediate")])
    return record


def list_products(rid: str, *, stale: bool = False) -> Callable[[Conn], list[JsonObject]]:
    """Read: the products of request ``rid`` in the order they were made, as JSON-ready data;
    with ``stale``, only those no longer current (``stale`` says why)."""

    def fn(conn: Conn) -> list[JsonObject]:
        only = " AND stale IS NOT NULL" if stale else ""
        rows = conn.execute(
            f"SELECT {PRODUCT_COLUMNS} FROM products WHERE request = ?{only} ORDER BY id", (rid,)
        ).fetchall()
        return [_row(r) for r in rows]

    return fn


def stage_products(
    rid: str, stage: str, types: tuple[str, ...]
) -> Callable[[Conn], list[tuple[str, str, str, JsonObject]]]:
    """Read: ``(id, path, type, metadata)`` of the current (not stale) products ``stage``
    of ``rid`` made, in the order they were made; only those of ``types`` unless empty."""

    def fn(conn: Conn) -> list[tuple[str, str, str, JsonObject]]:
        rows = conn.execute(
            "SELECT id, path, type, metadata FROM products WHERE request = ? AND stage = ?"
            " AND stale IS NULL ORDER BY id",
            (rid, stage),
        ).fetchall()
        return [(r[0], r[1], r[2], json.loads(r[3])) for r in rows if not types or r[2] in types]

    return fn


def provenance(product_id: str) -> Callable[[Conn], JsonObject]:
    """Read: the product with the job that made it, the request and definition, and its
    inputs, each an upstream product (with its own provenance) or a catalog entry.
    Raises ``UnknownProduct``."""

    def fn(conn: Conn) -> JsonObject:
        if _product(conn, product_id) is None:
            raise UnknownProduct(f"no product {product_id} (see `wfe products REQUEST`)")
        return _chain(conn, product_id, set())

    return fn


def _product(conn: Conn, product_id: str) -> JsonObject | None:
    row = conn.execute(
        f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ?", (product_id,)
    ).fetchone()
    return None if row is None else _row(row)


def _chain(conn: Conn, product_id: str, seen: set[str]) -> JsonObject:
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
    inputs: list[JsonValue] = []
    keys = product["inputs"]
    assert isinstance(keys, list)  # a JSON list of input keys, as settle_batch wrote it
    for key in keys:
        kind, _, ref = str(key).partition(":")
        if kind == "product" and ref not in seen:
            inputs.append(_chain(conn, ref, seen))
        elif kind == "catalog":
            item: JsonObject = {"kind": "catalog", "path": ref}
            entry = catalog.entry(conn, ref)
            if entry is not None:
                item.update(size=entry.size, sha256=entry.sha256, metadata=entry.metadata)
            else:
                item["missing"] = True
            inputs.append(item)
        else:
            inputs.append({"kind": kind, "ref": ref or str(key)})
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
