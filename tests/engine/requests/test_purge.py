"""Disk pressure: the purge's choice as a property, and a quota on a real engine that
purges intermediate product files, keeps final ones, and keeps provenance walkable."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.requests.purge import Candidate, choose

from .conftest import HEAD, open_world

candidates = st.lists(
    st.builds(
        Candidate,
        id=st.uuids().map(str),
        size=st.integers(0, 1000),
        created_at=st.floats(0, 1e6, allow_nan=False),
        intermediate=st.booleans(),
        in_use=st.booleans(),
    ),
    unique_by=lambda c: c.id,
    max_size=30,
)


@given(candidates, st.integers(1, 20_000), st.floats(0.05, 1.0))
def test_purge_frees_oldest_intermediates_until_under_the_mark(
    products: list[Candidate], quota: int, purge_at: float
) -> None:
    """Only intermediate products not in use are chosen, oldest first; the choice stops as
    soon as the kept total is at or under the mark, and goes on only while it is above."""
    chosen = choose(products, quota=quota, purge_at=purge_at)
    by_id = {p.id: p for p in products}
    assert all(by_id[i].intermediate and not by_id[i].in_use for i in chosen)
    assert len(set(chosen)) == len(chosen)
    mark = quota * purge_at
    used = sum(p.size for p in products)
    left = used - sum(by_id[i].size for i in chosen)
    eligible = sorted(
        (p for p in products if p.intermediate and not p.in_use), key=lambda p: (p.created_at, p.id)
    )
    assert chosen == [p.id for p in eligible[: len(chosen)]]  # oldest first, none skipped
    if used <= mark:
        assert chosen == []
    elif len(chosen) < len(eligible):
        assert left <= mark  # stopped because it got under the mark
    if chosen:
        assert left + by_id[chosen[-1]].size > mark  # the last one was still needed


PIPELINE = (
    HEAD
    + """
[[stages]]
name = "cal"
rscript = "work"
consumes = "query"
max_inputs = 1
lifetime = "intermediate"

[[stages]]
name = "map"
rscript = "work"
consumes = "cal"
max_inputs = 1
"""
)


def exists(path: str) -> bool:
    return os.path.exists(path)


def raw_of(chain: dict[str, Any]) -> list[str]:
    if chain.get("kind") == "catalog":
        return [chain["path"]]
    return [p for item in chain.get("from") or [] for p in raw_of(item)]


async def test_a_quota_purges_intermediates_and_provenance_still_walks(tmp_path: Any) -> None:
    """Under a quota smaller than the final products alone, every intermediate (cal) file
    is purged once no stage needs it, the final (map) files are all kept, the request still
    checks and completes, each purge is an event, and the provenance of every map product
    still reaches its raw input through the purged cal product."""
    storage = '\n[storage]\nquota = "60"\npurge_at = 1.0\n'
    async with open_world(tmp_path, extra_config=storage) as world:
        await world.catalog(["r1.dat", "r2.dat", "r3.dat"])
        rid = (await world.submit(world.definition(PIPELINE)))["id"]
        assert (await world.wait(rid))["state"] == "completed"
        products = await world.call("products", request=rid)
        cal = [p for p in products if p["stage"] == "cal"]
        final = [p for p in products if p["stage"] == "map"]
        assert len(cal) == len(final) == 3
        assert all(p["intermediate"] and p["purged_at"] for p in cal)
        assert not any(exists(p["path"]) for p in cal)
        assert all(not p["intermediate"] and p["purged_at"] is None for p in final)
        assert all(exists(p["path"]) for p in final)

        def purge_events(conn: Any) -> list[str]:
            rows = conn.execute("SELECT subject FROM events WHERE kind = 'product.purged'")
            return sorted(r[0] for r in rows)

        assert await world.engine.repo.read(purge_events) == sorted(p["id"] for p in cal)
        for product in final:
            chain = await world.call("provenance", product=product["id"])
            assert chain["from"][0]["purged_at"] is not None
            assert [os.path.basename(p) for p in raw_of(chain)] == [
                os.path.basename(product["path"]).removesuffix(".out.out")
            ]
        code, out, err = await world.wfe("provenance", final[0]["id"])
        assert code == 0, err
        assert "file purged" in out and "raw " in out


STANDING = """
[workflow]
name = "q"
namespace = "tests"
trigger = "continuous"

[policy]
approval = "none"

[[query.where]]
field = "kind"
op = "eq"
value = "raw"

[[stages]]
name = "cal"
rscript = "work"
consumes = "query"
max_inputs = 1
lifetime = "intermediate"

[[stages]]
name = "map"
rscript = "work"
consumes = "cal"
max_inputs = 1
version_policy = "reprocess"
params = { count = COUNT }
"""


async def test_a_purged_input_needed_again_is_made_again(tmp_path: Any) -> None:
    """A new version of map re-runs it on cal products whose files were purged: cal makes
    them again from the raw files first, and map runs on the new ones; no job fails."""
    from wfe.engine.cli.requests import submission

    storage = '\n[storage]\nquota = "1"\npurge_at = 1.0\n'
    async with open_world(tmp_path, extra_config=storage) as world:
        await world.catalog(["r1.dat", "r2.dat", "r3.dat"])
        rid = (await world.submit(world.definition(STANDING.replace("COUNT", "1"))))["id"]

        async def current(stage: str, count: int) -> Any:
            made = await world.call("products", request=rid)
            now = [p for p in made if p["stage"] == stage and p["stale"] is None]
            detail = await world.detail(rid)
            busy = any(j["state"] in ("queued", "running") for j in detail["jobs"])
            gap = any(s["inputs"].get("unallocated") for s in detail["stages"])
            return now if len(now) == count and not busy and not gap else None

        first = await world.until("map done", lambda: current("map", 3))
        cal = [p for p in await world.call("products", request=rid) if p["stage"] == "cal"]
        assert all(p["purged_at"] for p in cal)  # map took them all: nothing needs them

        changed = world.definition(STANDING.replace("COUNT", "2"), name="v2.toml")
        payload = submission(changed, user="alice")
        keep = ("expanded", "sources", "git", "scripts")
        await world.call("submit", update=rid, **{k: payload[k] for k in keep})
        again = await world.until("map again", lambda: current("map", 3))
        assert {p["id"] for p in again}.isdisjoint(p["id"] for p in first)
        detail = await world.detail(rid)
        assert all(j["state"] == "succeeded" for j in detail["jobs"])
        assert sum(j["stage"] == "cal" for j in detail["jobs"]) == 6  # each raw file twice
        for product in again:
            chain = await world.call("provenance", product=product["id"])
            (made_from,) = chain["from"]
            assert made_from["id"] not in {p["id"] for p in cal}  # a new cal product
            assert made_from["from"][0]["kind"] == "catalog"
        regenerated = [e for e in detail["history"] if e["kind"] == "request.regenerate"]
        assert regenerated and sum(e["rerun"] for e in regenerated) == 3
