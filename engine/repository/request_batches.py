"""The repository side of a request's batches: allocating inputs to batches, linking their
jobs, and settling them (inputs processed, released or withdrawn; products recorded).

Every function here runs inside a write op and emits its event in the same transaction.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from wfe.engine.repository.rowtypes import Conn, JsonObject, JsonValue
from wfe.engine.repository.writer import Tx
from wfe.engine.requests import plan
from wfe.engine.requests.model import Batch, BatchOutcome
from wfe.protocols.request import InputAllocation, InputState
from wfe.rscripts.results import Product


def _allocations(tx: Tx, rid: str, stage: str, keys: Sequence[str]) -> list[InputAllocation]:
    result = []
    for key in keys:
        row = tx.execute(
            "SELECT state, allocations, batch, reason FROM stage_inputs"
            " WHERE request = ? AND stage = ? AND input = ?",
            (rid, stage, key),
        ).fetchone()
        result.append(
            InputAllocation(
                input_id=key,
                state=InputState(row[0]),
                allocations=row[1],
                job_id=row[2] if row[0] == InputState.ALLOCATED.value else None,
                reason=row[3] or "",
            )
        )
    return result


def _write_allocations(
    tx: Tx, rid: str, stage: str, allocations: Iterable[InputAllocation]
) -> None:
    tx.executemany(
        "UPDATE stage_inputs SET state = ?, allocations = ?, batch = COALESCE(?, batch),"
        " reason = ? WHERE request = ? AND stage = ? AND input = ?",
        [
            (a.state.value, a.allocations, a.job_id, a.reason or None, rid, stage, a.input_id)
            for a in allocations
        ],
    )


def open_batch(
    rid: str, stage: str, keys: Sequence[str], output_root: str | None
) -> Callable[[Tx], Batch]:
    """Make a batch of ``keys`` and allocate them to it (they must be unallocated). Its
    output directory is ``<output_root>/<request>/<stage>/<batch>`` when a root is given."""

    def op(tx: Tx) -> Batch:
        batch_id = f"b{tx.allocate('batch'):06d}"
        allocations = [a.allocate(batch_id) for a in _allocations(tx, rid, stage, keys)]
        _write_allocations(tx, rid, stage, allocations)
        output_dir = None if output_root is None else f"{output_root}/{rid}/{stage}/{batch_id}"
        tx.execute(
            "INSERT INTO stage_batches (id, request, stage, inputs, output_dir, state, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'open', ?)",
            (batch_id, rid, stage, json.dumps(list(keys)), output_dir, tx.at),
        )
        tx.emit("request.batch", rid, {"batch": batch_id, "stage": stage, "inputs": list(keys)})
        return Batch(
            id=batch_id,
            request=rid,
            stage=stage,
            job=None,
            inputs=tuple(keys),
            output_dir=output_dir,
            open=True,
        )

    return op


def input_paths(rid: str, stage: str, keys: Sequence[str]) -> Callable[[Conn], dict[str, str]]:
    """Read: ``{path: input key}`` of the inputs ``keys`` of a stage (what a product's
    ``from`` names)."""

    def fn(conn: Conn) -> dict[str, str]:
        marks = ", ".join("?" * len(keys))
        rows = conn.execute(
            f"SELECT path, input FROM stage_inputs WHERE request = ? AND stage = ? AND input IN ({marks})",
            (rid, stage, *keys),
        ).fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    return fn


def link_batch(batch: Batch, job_id: str) -> Callable[[Tx], None]:
    """Record the job that runs ``batch``."""

    def op(tx: Tx) -> None:
        tx.execute("UPDATE stage_batches SET job = ? WHERE id = ?", (job_id, batch.id))
        tx.execute(
            "UPDATE stage_inputs SET job = ? WHERE batch = ? AND state = 'allocated'",
            (job_id, batch.id),
        )
        tx.emit(
            "request.job", batch.request, {"batch": batch.id, "stage": batch.stage, "job": job_id}
        )

    return op


def stop_batch(batch: Batch, reason: str) -> Callable[[Tx], None]:
    """Note why the engine is about to stop ``batch``'s job (read when it is settled)."""

    def op(tx: Tx) -> None:
        tx.execute(
            "UPDATE stage_batches SET stop = ? WHERE id = ? AND stop IS NULL", (reason, batch.id)
        )

    return op


def settle_batch(
    batch: Batch,
    outcome: BatchOutcome,
    *,
    max_allocations: int,
    reason: str = "",
    products: Sequence[Product] = (),
    definition: str = "",
    version: str | None = None,
    product_inputs: Sequence[Sequence[str]] | None = None,
    intermediate: bool = False,
) -> Callable[[Tx], list[str]]:
    """Settle an open batch: its inputs processed, released or withdrawn, its products
    recorded (linked to job, inputs and definition). ``product_inputs`` gives, per product,
    the input keys it was made from (an empty entry: every input of the batch). Returns the
    new product ids; settling a batch twice does nothing the second time."""

    def op(tx: Tx) -> list[str]:
        row = tx.execute("SELECT state FROM stage_batches WHERE id = ?", (batch.id,)).fetchone()
        if row is None or row[0] != "open":
            return []
        before = _allocations(tx, batch.request, batch.stage, batch.inputs)
        after = plan.settle(
            before, batch.id, outcome, max_allocations=max_allocations, reason=reason
        )
        _write_allocations(tx, batch.request, batch.stage, after)
        ids = []
        for n, product in enumerate(products):
            sources = list(product_inputs[n]) if product_inputs and product_inputs[n] else []
            product_id = f"p{tx.allocate('product'):06d}"
            tx.execute(
                "INSERT INTO products (id, request, stage, batch, job, path, type, size, sha256, metadata,"
                " inputs, definition, created_at, version, intermediate)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (product_id, batch.request, batch.stage, batch.id, batch.job or "", product.path, product.type,
                 product.size, product.sha256, json.dumps(product.metadata), json.dumps(sources or list(batch.inputs)),
                 definition, tx.at, version, int(intermediate)),
            )  # fmt: skip
            ids.append(product_id)
        tx.execute(
            "UPDATE stage_batches SET state = 'settled', outcome = ?, error = ?, settled_at = ? WHERE id = ?",
            (outcome.value, reason or None, tx.at, batch.id),
        )
        counts: Counter[str] = Counter(a.state.value for a in after)
        data: JsonObject = {
            "batch": batch.id,
            "stage": batch.stage,
            "job": batch.job,
            "outcome": outcome.value,
            "inputs": dict[str, JsonValue](counts),
            "products": list[JsonValue](ids),
        }
        if reason:
            data["reason"] = reason
        tx.emit("request.settled", batch.request, data)
        return ids

    return op
