"""Checking: what a request must satisfy before it completes.

When every stage has ended the request enters ``checking``. It completes only if

* every stage is terminal, and every input of every stage that ran is ``processed``, or
  ``failed`` in a stage the policy lets fail (``on_stage_failure = "complete"``);
* every product recorded for it is present, with the size and sha256 its job reported.

The product files are re-hashed on worker threads (they can be large); the engine must be
able to read them (local agents, or storage shared with the agents). Otherwise the request
fails with the list of problems (``requests.failures``), the first one in its error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import trio

from wfe.engine.definitions import Definition, OnStageFailure
from wfe.engine.requests.catalog import hash_file
from wfe.engine.requests.model import STAGE_TERMINAL, StageInput, StageRecord, StageState
from wfe.protocols.request import InputState

#: Product files hashed at once while checking.
PARALLEL_HASHES = 4


def input_problems(
    definition: Definition,
    stages: Mapping[str, StageRecord],
    inputs: Mapping[str, Sequence[StageInput]],
) -> list[str]:
    """One line per stage or input that is not where a finished request needs it. Pure."""
    tolerate = definition.policy.on_stage_failure is OnStageFailure.COMPLETE
    problems = []
    for name, stage in stages.items():
        if stage.state not in STAGE_TERMINAL:
            problems.append(f"stage {name!r} has not ended (state {stage.state.value})")
        for item in inputs.get(name, ()):
            state = item.allocation.state
            if state is InputState.PROCESSED:
                continue
            if state is InputState.FAILED:
                if not (tolerate and stage.state is StageState.FAILED):
                    problems.append(
                        f"stage {name!r}: input {item.key} failed: {item.allocation.reason}"
                    )
            else:
                problems.append(f"stage {name!r}: input {item.key} is still {state.value}")
    return problems


def product_problems(
    products: Iterable[Mapping[str, Any]], found: Mapping[str, tuple[int, str] | str]
) -> list[str]:
    """One line per product whose file is missing or differs. ``found`` maps a product id
    to ``(size, sha256)`` of its file, or to why it could not be read. Pure."""
    problems = []
    for p in products:
        seen = found.get(p["id"], "not checked")
        where = f"product {p['id']} ({p['path']})"
        if isinstance(seen, str):
            problems.append(f"{where}: {seen}")
            continue
        size, sha = seen
        if sha != p["sha256"]:
            problems.append(
                f"{where}: sha256 {sha[:12]}… differs from the recorded {p['sha256'][:12]}…"
            )
        elif size != p["size"]:
            problems.append(f"{where}: size {size} differs from the recorded {p['size']}")
    return problems


async def rehash(products: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, str] | str]:
    """Hash every product's file on worker threads (``PARALLEL_HASHES`` at a time)."""
    found: dict[str, tuple[int, str] | str] = {}
    limiter = trio.CapacityLimiter(PARALLEL_HASHES)

    async def one(product: Mapping[str, Any]) -> None:
        try:
            found[product["id"]] = await trio.to_thread.run_sync(
                hash_file, product["path"], limiter=limiter
            )
        except FileNotFoundError:
            found[product["id"]] = "missing"
        except OSError as exc:
            found[product["id"]] = f"unreadable: {exc.strerror or exc}"

    async with trio.open_nursery() as nursery:
        for product in products:
            nursery.start_soon(one, product)
    return found
