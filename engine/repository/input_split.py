"""The repository side of a job whose inputs are split for its retry (``on_retry =
{ max_inputs = "/2" }``): inside the transaction that ends the attempt and queues the job
again (``attempts.attempt_ended``), the job's params keep the first inputs (and its
``locality`` requirement their replicas), its batch names only those, the others are withdrawn to the stage (unallocated, the allocation not counted:
the split, not the input, is why they go back), and a ``request.split`` event says so.

Its request's service hears the requeue's ``job.state`` event of the same commit, and
batches the released inputs again (``plan.batches_to_make``).
"""

from __future__ import annotations

import json

from wfe.engine.repository.request_batches import _allocations, _write_allocations
from wfe.engine.repository.rowtypes import JsonObject, JsonValue
from wfe.engine.repository.writer import Tx
from wfe.engine.requests import plan
from wfe.engine.requests.split import inputs_of, kept_locality, kept_params, split_batch


def split_job(tx: Tx, job_id: str, attempt: int, keep: int, reason: str) -> JsonObject | None:
    """Cut ``job_id``'s open batch after its first ``keep`` inputs (see the module doc);
    returns the ``request.split`` event's data, or None when the job has no open batch whose
    inputs match its params (then nothing changes and the job retries as it was)."""
    row = tx.execute(
        "SELECT b.id, b.request, b.stage, b.inputs, j.params, j.requirements FROM stage_batches b"
        " JOIN jobs j ON j.id = b.job WHERE b.job = ? AND b.state = 'open'",
        (job_id,),
    ).fetchone()
    if row is None:
        return None
    batch, rid, stage, keys_json, params_json, requirements_json = row
    keys: list[str] = json.loads(keys_json)
    params = json.loads(params_json)
    if inputs_of(params) != len(keys) or not 0 < keep < len(keys):
        return None
    cut = split_batch(keys, keep)
    tx.execute(
        "UPDATE jobs SET params = ? WHERE id = ?", (json.dumps(kept_params(params, keep)), job_id)
    )
    tx.execute(
        "UPDATE stage_batches SET inputs = ? WHERE id = ?", (json.dumps(list(cut.kept)), batch)
    )
    placed = json.loads(requirements_json).get("locality")
    if placed is not None:  # the replicas of the inputs it keeps
        tx.execute(
            "UPDATE jobs SET requirements = json_set(requirements, '$.locality', json(?))"
            " WHERE id = ?",
            (json.dumps(kept_locality(placed, keep)), job_id),
        )
    released = [plan.withdraw(a, batch) for a in _allocations(tx, rid, stage, cut.released)]
    _write_allocations(tx, rid, stage, released)
    data: JsonObject = {
        "batch": batch,
        "stage": stage,
        "job": job_id,
        "attempt": attempt,
        "kept": list[JsonValue](cut.kept),
        "released": list[JsonValue](cut.released),
        "reason": reason,
    }
    tx.emit("request.split", rid, data)
    return data
