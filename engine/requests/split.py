"""Splitting a batch's job for its retry (``on_retry = { max_inputs = "/2" }``): pure.

After an attempt ran out of memory or timed out, the controller's policy says how many of
its inputs the job keeps (``on_retry.inputs_kept``: the first ``ceil(n / N)``). This module
cuts the batch there: the job keeps the first inputs, in the order it was given them, and
the rest go back to the stage as unallocated inputs, to be batched again. Every input is in
exactly one of the two parts, so each still ends in exactly one successful job. The write
is ``wfe.engine.repository.input_split`` (one transaction with the requeue).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from wfe.engine.definitions import INPUTS_PARAM


@attrs.frozen(kw_only=True)
class Split:
    """A batch cut in two: ``kept`` stays with the job, ``released`` goes back to the stage."""

    kept: tuple[str, ...]
    released: tuple[str, ...]


def split_batch(keys: Sequence[str], keep: int) -> Split:
    """The batch of input ``keys`` cut after the first ``keep``. Raises ``ValueError`` when
    ``keep`` would leave the job with nothing or keep everything (then there is no split)."""
    if not 0 < keep < len(keys):
        raise ValueError(f"cannot keep {keep} of {len(keys)} inputs: nothing to split")
    return Split(kept=tuple(keys[:keep]), released=tuple(keys[keep:]))


def kept_params(params: Mapping[str, Any], keep: int) -> dict[str, Any]:
    """A job's params with only its first ``keep`` inputs (what its retry receives). Raises
    ``ValueError`` when the params carry no list of inputs to cut."""
    given = params.get(INPUTS_PARAM)
    if not isinstance(given, list):
        raise ValueError(f"the job's params have no {INPUTS_PARAM} list to split")
    return {**params, INPUTS_PARAM: given[:keep]}


def kept_locality(placed: Mapping[str, Any], keep: int) -> dict[str, Any]:
    """A job's ``requirements["locality"]`` (``wfe.engine.dispatch.locality.placement``) for
    its first ``keep`` inputs: each site's picks, the replicas and the names cut there, so
    the retry is given, and records, the replicas of the inputs it runs. The sites that
    reach the job and their distances stay those of the whole batch (the distances are not
    at hand here): a site is never offered an input it cannot reach, but one that could
    reach the kept inputs alone and not the others is still left out."""
    sites = {
        site: {**where, "pick": list(where["pick"])[:keep]}
        for site, where in placed["sites"].items()
    }
    return {
        **placed,
        "sites": sites,
        "replicas": list(placed.get("replicas") or ())[:keep],
        "names": list(placed.get("names") or ())[:keep],
    }


def inputs_of(params: Mapping[str, Any]) -> int:
    """How many inputs a job's params give it (0: none, or not a stage's job)."""
    given = params.get(INPUTS_PARAM)
    return len(given) if isinstance(given, list) else 0
