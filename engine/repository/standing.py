"""The repository side of standing requests: a new definition for a running request,
stale products, and inputs run again (a stage's new version, a sub-group that grew).

Staleness spreads downstream by provenance: once some products are stale, every product
of a downstream stage made from one of them is stale too, and the downstream stages drop
the stale products from their inputs (the products and batches keep the history of what
ran; an input a job holds now stays until that job ends). The new products of the re-run
come to the downstream stages as new inputs. Every op emits its events in its transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence

from wfe.engine.definitions import Definition
from wfe.engine.repository.requests import LIVE_STATES, get_request, store_definition
from wfe.engine.repository.rowtypes import Conn, JsonObject, JsonValue
from wfe.engine.repository.writer import Tx
from wfe.engine.requests.errors import RefusedTransition
from wfe.engine.requests.model import RequestRecord
from wfe.protocols.request import InputState, RequestState

#: States in which a standing request may take a new definition.
UPDATABLE = frozenset({RequestState.RUNNING, RequestState.PAUSED})


def _rerun_inputs(tx: Tx, rid: str, stage: str, keys: Sequence[str] | None) -> int:
    """Processed or failed inputs of ``stage`` (only ``keys`` when given) back to the gap."""
    sql = (
        "UPDATE stage_inputs SET state = ?, allocations = 0, reason = NULL"
        " WHERE request = ? AND stage = ? AND state IN (?, ?)"
    )
    args: list[JsonValue] = [
        InputState.UNALLOCATED.value,
        rid,
        stage,
        InputState.PROCESSED.value,
        InputState.FAILED.value,
    ]
    if keys is not None:
        sql += f" AND input IN ({', '.join('?' * len(keys))})"
        args += list(keys)
    return int(tx.execute(sql, args).rowcount)


def _spread(tx: Tx, rid: str, downstream: Sequence[str], reason: str) -> int:
    """Mark stale every product of ``downstream`` (in run order) made from a stale product,
    drop the stale products from those stages' inputs, and put the other inputs of the
    products that just turned stale back in the gap (a product made from several inputs
    is made again from those still current). Returns how many products turned stale."""
    stale = "SELECT 'product:' || id FROM products WHERE request = ? AND stale IS NOT NULL"
    count = 0
    for stage in downstream:
        ids = [
            str(r[0])
            for r in tx.execute(
                "SELECT id FROM products WHERE request = ? AND stage = ? AND stale IS NULL"
                f" AND EXISTS (SELECT 1 FROM json_each(products.inputs) j WHERE j.value IN ({stale}))",
                (rid, stage, rid),
            )
        ]
        marks = ", ".join("?" * len(ids))
        if ids:
            tx.execute(f"UPDATE products SET stale = ? WHERE id IN ({marks})", (reason, *ids))
            count += len(ids)
        tx.execute(
            "DELETE FROM stage_inputs WHERE request = ? AND stage = ? AND state != ?"
            f" AND input IN ({stale})",
            (rid, stage, InputState.ALLOCATED.value, rid),
        )
        if not ids:
            continue
        tx.execute(
            "UPDATE stage_inputs SET state = ?, allocations = 0, reason = NULL"
            " WHERE request = ? AND stage = ? AND state = ? AND input IN"
            f" (SELECT j.value FROM products p, json_each(p.inputs) j WHERE p.id IN ({marks}))",
            (InputState.UNALLOCATED.value, rid, stage, InputState.PROCESSED.value, *ids),
        )
    return count


def update_definition(
    rid: str,
    definition: Definition,
    scripts: Mapping[str, tuple[str, str, str]],
    library_scripts: Mapping[str, str],
    *,
    changed: Sequence[str],
    reprocess: Sequence[str],
    downstream: Sequence[str],
    by: str,
) -> Callable[[Tx], RequestRecord]:
    """Give running (or paused) standing request ``rid`` a new definition and scripts.

    ``changed`` are the stages whose version changed; of them, ``reprocess`` (policy
    "reprocess") have their products marked stale and their inputs put back in the gap, and
    ``downstream`` (every stage below them, in run order) lose what was made from those.
    Raises ``RefusedTransition`` when the request is not running or paused (nothing
    changes). Emits ``request.updated``.
    """

    def op(tx: Tx) -> RequestRecord:
        record = get_request(tx, rid)
        if record.state not in UPDATABLE:
            raise RefusedTransition(
                f"request {rid}: can't take a new definition in state {record.state.value}"
                " (only a running or paused standing request can)"
            )
        mapping = store_definition(tx, definition, scripts, library_scripts)
        tx.execute(
            "UPDATE requests SET definition = ?, scripts = ?, updated_at = ? WHERE id = ?",
            (definition.sha256, json.dumps(mapping), tx.at, rid),
        )
        reason = f"stage version changed ({definition.sha256[:12]})"
        stale = rerun = 0
        for stage in reprocess:
            stale += tx.execute(
                "UPDATE products SET stale = ? WHERE request = ? AND stage = ? AND stale IS NULL",
                (reason, rid, stage),
            ).rowcount
            rerun += _rerun_inputs(tx, rid, stage, None)
        stale += _spread(tx, rid, downstream, f"made from stale products ({reason})")
        data: JsonObject = {
            "definition": definition.sha256,
            "from": record.definition,
            "changed": list(changed),
            "reprocess": list(reprocess),
            "stale": stale,
            "rerun": rerun,
            "by": by,
        }
        tx.emit("request.updated", rid, data)
        return get_request(tx, rid)

    return op


def rerun_group(
    rid: str, stage: str, keys: Sequence[str], downstream: Sequence[str]
) -> Callable[[Tx], int]:
    """Put the processed inputs ``keys`` of a sub-group that grew back in the gap; the
    products made from them are superseded (stale), and so, downstream, what was made from
    those. Emits ``request.regrouped``; returns how many inputs will run again."""

    def op(tx: Tx) -> int:
        rerun = _rerun_inputs(tx, rid, stage, keys)
        marks = ", ".join("?" * len(keys))
        reason = "superseded: its sub-group grew"
        stale = tx.execute(
            "UPDATE products SET stale = ? WHERE request = ? AND stage = ? AND stale IS NULL"
            f" AND EXISTS (SELECT 1 FROM json_each(products.inputs) j WHERE j.value IN ({marks}))",
            (reason, rid, stage, *keys),
        ).rowcount
        stale += _spread(tx, rid, downstream, f"made from superseded products of {stage!r}")
        tx.emit("request.regrouped", rid, {"stage": stage, "rerun": rerun, "stale": stale})
        return rerun

    return op


def changed_inputs(rid: str, stage: str) -> Callable[[Conn], list[str]]:
    """Read: keys of a stage's catalog inputs, taken already, whose catalog entry's content
    changed since (another sha256)."""

    def fn(conn: Conn) -> list[str]:
        rows = conn.execute(
            "SELECT i.input FROM stage_inputs i JOIN catalog c ON 'catalog:' || c.path = i.input"
            " WHERE i.request = ? AND i.stage = ? AND i.sha256 IS NOT NULL"
            " AND c.sha256 != i.sha256 AND i.state IN (?, ?) ORDER BY i.seq",
            (rid, stage, InputState.PROCESSED.value, InputState.FAILED.value),
        ).fetchall()
        return [str(r[0]) for r in rows]

    return fn


def rerun_changed(
    rid: str, stage: str, keys: Sequence[str], downstream: Sequence[str]
) -> Callable[[Tx], int]:
    """Put catalog inputs whose entry changed back in the gap with the entry's new
    sha256 and metadata; the products made from them turn stale, and what downstream
    stages made from those. Emits ``request.changed``; returns how many will run again."""

    def op(tx: Tx) -> int:
        rerun = _rerun_inputs(tx, rid, stage, keys)
        marks = ", ".join("?" * len(keys))
        tx.execute(
            "UPDATE stage_inputs SET"
            " sha256 = (SELECT c.sha256 FROM catalog c WHERE 'catalog:' || c.path = input),"
            " metadata = (SELECT c.metadata FROM catalog c WHERE 'catalog:' || c.path = input)"
            f" WHERE request = ? AND stage = ? AND input IN ({marks})",
            (rid, stage, *keys),
        )
        reason = "its input changed in the catalog"
        stale = tx.execute(
            "UPDATE products SET stale = ? WHERE request = ? AND stage = ? AND stale IS NULL"
            f" AND EXISTS (SELECT 1 FROM json_each(products.inputs) j WHERE j.value IN ({marks}))",
            (reason, rid, stage, *keys),
        ).rowcount
        stale += _spread(tx, rid, downstream, f"made from stale products ({reason})")
        tx.emit(
            "request.changed",
            rid,
            {"stage": stage, "inputs": list[JsonValue](keys), "stale": stale},
        )
        return rerun

    return op


def last_rounds(rid: str) -> Callable[[Conn], dict[str, float]]:
    """Read: stage -> wall-clock time of its newest batch (``request.batch`` events)."""

    def fn(conn: Conn) -> dict[str, float]:
        rows = conn.execute(
            "SELECT json_extract(data, '$.stage'), MAX(at) FROM events"
            " WHERE subject = ? AND kind = 'request.batch' GROUP BY 1",
            (rid,),
        ).fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    return fn


def purged_inputs(rid: str, keys: Sequence[str]) -> Callable[[Conn], list[str]]:
    """Read: the ids of the current (not stale) products among input ``keys`` whose files
    were purged."""

    def fn(conn: Conn) -> list[str]:
        ids = [k.removeprefix("product:") for k in keys if k.startswith("product:")]
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        rows = conn.execute(
            f"SELECT id FROM products WHERE request = ? AND id IN ({marks})"
            " AND purged_at IS NOT NULL AND stale IS NULL ORDER BY id",
            (rid, *ids),
        ).fetchall()
        return [str(r[0]) for r in rows]

    return fn


def regenerate(
    rid: str, product_ids: Sequence[str], downstream_of: Mapping[str, Sequence[str]]
) -> Callable[[Tx], int]:
    """Make purged products again: the inputs they were made from go back to their stage's
    gap, the purged products turn stale (and, by ``downstream_of`` — stage -> the stages
    below it in run order —, what was made from them), so the stages that wanted them take
    the new products as they come. Emits ``request.regenerate``; returns the inputs re-run."""

    def op(tx: Tx) -> int:
        rerun = 0
        stages: list[str] = []
        for pid in product_ids:
            row = tx.execute(
                "SELECT stage, inputs FROM products WHERE id = ? AND request = ?"
                " AND purged_at IS NOT NULL AND stale IS NULL",
                (pid, rid),
            ).fetchone()
            if row is None:
                continue
            stage, keys = str(row[0]), json.loads(row[1])
            rerun += _rerun_inputs(tx, rid, stage, keys)
            tx.execute(
                "UPDATE products SET stale = ? WHERE id = ?",
                ("regenerated: its file was purged", pid),
            )
            if stage not in stages:
                stages.append(stage)
        for stage in stages:
            _spread(tx, rid, downstream_of.get(stage, ()), "made from a purged product")
        tx.emit(
            "request.regenerate",
            rid,
            {"products": list[JsonValue](product_ids), "rerun": rerun},
        )
        return rerun

    return op


def kept_products(
    protected: Collection[tuple[str, str]] = (),
) -> Callable[[Conn], list[tuple[str, int, float, bool, bool]]]:
    """Read: ``(id, size, created_at, intermediate, in use)`` of every product whose file
    is kept (not purged). In use: an input a stage has not processed yet (waiting for a
    job, or held by one now); while its request is live, a product no stage has taken as an
    input yet (the stage that consumes it may not have started); and any input of the
    ``protected`` ``(request, stage)`` pairs (``group_by`` stages of standing requests,
    which run a sub-group again whole when it grows)."""
    live = tuple(s.value for s in LIVE_STATES)
    pairs = sorted(f"{rid}\x00{stage}" for rid, stage in protected)

    def fn(conn: Conn) -> list[tuple[str, int, float, bool, bool]]:
        rows = conn.execute(
            "SELECT p.id, p.size, p.created_at, p.intermediate,"
            " EXISTS (SELECT 1 FROM stage_inputs i WHERE i.request = p.request"
            "   AND i.input = 'product:' || p.id AND (i.state IN (?, ?)"
            "   OR i.request || char(0) || i.stage IN (" + ", ".join("?" * len(pairs)) + ")))"
            " OR (r.state IN (" + ", ".join("?" * len(live)) + ")"
            "   AND NOT EXISTS (SELECT 1 FROM stage_inputs i WHERE i.request = p.request"
            "   AND i.input = 'product:' || p.id))"
            " FROM products p JOIN requests r ON r.id = p.request"
            " WHERE p.purged_at IS NULL ORDER BY p.created_at, p.id",
            (InputState.UNALLOCATED.value, InputState.ALLOCATED.value, *pairs, *live),
        ).fetchall()
        return [(str(r[0]), int(r[1]), float(r[2]), bool(r[3]), bool(r[4])) for r in rows]

    return fn


def mark_purged(ids: Sequence[str]) -> Callable[[Tx], list[tuple[str, int]]]:
    """Record that the files of products ``ids`` are purged (records, checksums and
    provenance stay); one ``product.purged`` event each. Returns ``(path, size)`` of each
    one this op marked (not those marked already)."""

    def op(tx: Tx) -> list[tuple[str, int]]:
        marked = []
        for pid in ids:
            row = tx.execute(
                "SELECT path, size, request FROM products WHERE id = ? AND purged_at IS NULL",
                (pid,),
            ).fetchone()
            if row is None:
                continue
            tx.execute("UPDATE products SET purged_at = ? WHERE id = ?", (tx.at, pid))
            tx.emit(
                "product.purged",
                pid,
                {"request": row[2], "path": row[0], "size": row[1]},
            )
            marked.append((str(row[0]), int(row[1])))
        return marked

    return op
