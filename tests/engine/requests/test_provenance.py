"""Provenance per input and its standard forms, through a real engine: a product whose
result names its inputs (``"from"``) links to those only; `wfe provenance --format
prov-json` reads back with the prov library; `wfe export --ro-crate` reads back with
rocrate."""

from __future__ import annotations

import json
from pathlib import Path

from prov.model import ProvDocument
from rocrate.rocrate import ROCrate

from .conftest import HEAD, World

PAIRS = (
    HEAD
    + """
[[stages]]
name = "cal"
rscript = "work"
consumes = "query"
max_inputs = 2
params = { per_input = PER_INPUT }

[[stages]]
name = "map"
rscript = "work"
consumes = "cal"
"""
)


def raw_paths(chain: dict[str, object]) -> list[str]:
    """Paths of the raw catalog entries a provenance chain reaches."""
    if chain.get("kind") == "catalog":
        return [str(chain["path"])]
    found: list[str] = []
    for item in chain.get("from") or []:  # type: ignore[attr-defined]
        found += raw_paths(item)
    return sorted(set(found))


def uri(path: str | Path) -> str:
    return Path(path).resolve().as_uri()


async def test_products_link_only_the_inputs_they_name(world: World) -> None:
    """Two inputs in one job: with "from", each product comes from its own input only;
    without it, from both (the batch's inputs)."""
    await world.catalog(["r1.dat", "r2.dat"])
    for per_input, expected in (("true", 1), ("false", 2)):
        rid = (await world.submit(world.definition(PAIRS.replace("PER_INPUT", per_input))))["id"]
        assert (await world.wait(rid))["state"] == "completed"
        products = await world.call("products", request=rid)
        for product in (p for p in products if p["stage"] == "cal"):
            chain = await world.call("provenance", product=product["id"])
            found = raw_paths(chain)
            assert len(found) == expected
            if expected == 1:
                assert Path(found[0]).name + ".out" == Path(product["path"]).name
        code, out, err = await world.wfe("provenance", products[0]["id"])
        assert code == 0, err and "raw " in out


async def test_prov_json_and_ro_crate_read_back(world: World, tmp_path: Path) -> None:
    """The PROV-JSON of a map product names both raw files, its jobs and derivations and
    parses with prov; the RO-Crate of the request has every product, both raw files, the
    script by hash and one CreateAction per job, and parses with rocrate."""
    await world.catalog(["r1.dat", "r2.dat"])
    rid = (await world.submit(world.definition(PAIRS.replace("PER_INPUT", "true"))))["id"]
    assert (await world.wait(rid))["state"] == "completed"
    products = await world.call("products", request=rid)
    final = next(p for p in products if p["stage"] == "map")

    code, out, err = await world.wfe("provenance", final["id"], "--format", "prov-json")
    assert code == 0, err
    doc = ProvDocument.deserialize(content=out, format="json")
    records = doc.get_records()
    entities = {r.identifier.uri for r in records if r.get_type().localpart == "Entity"}
    raws = {e for e in entities if "#raw/" in e}
    assert len(raws) == 2
    assert f"https://wfe.invalid/ns#product/{final['id']}" in entities
    derived = [r for r in records if r.get_type().localpart == "Derivation"]
    assert len(derived) == 2 + 2  # map from two cal products, each from one raw file
    assert ProvDocument.deserialize(content=doc.serialize(format="json"), format="json") == doc

    target = tmp_path / "crate"
    code, out, err = await world.wfe("export", rid, "--ro-crate", str(target))
    assert code == 0, err
    crate = ROCrate(target)
    ids = {e.id for e in crate.get_entities()}
    for product in products:
        assert uri(product["path"]) in ids
    for raw in ("r1.dat", "r2.dat"):
        assert uri(world.data / raw) in ids
    actions = [e for e in crate.get_entities() if e.type == "CreateAction"]
    detail = await world.detail(rid)
    assert len(actions) == len(detail["jobs"]) == 2
    record = await world.call("request", request=rid)
    sha = record["scripts"]["work"]["sha256"]
    assert f"#script-{sha}" in ids
    data = json.loads((target / "ro-crate-metadata.json").read_text())
    assert any(e.get("sha256") == final["sha256"] for e in data["@graph"])
