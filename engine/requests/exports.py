"""Provenance in standard forms: W3C PROV (``prov``) and RO-Crate (``rocrate``).

Both are built from the JSON the console already serves (a product's provenance chain,
a request's record and products), so the CLI makes them on the operator's side:

* ``prov_document(chain)``: one product's chain as a PROV document. Products and raw
  catalog entries are entities, each job an activity (``used`` its inputs, the product
  ``wasGeneratedBy`` it and ``wasDerivedFrom`` its inputs), each agent an agent the job
  ``wasAssociatedWith``, with the definition as the plan.
* ``write_ro_crate(directory, record, products, chains)``: an RO-Crate of a request: the
  definition (by sha256), its scripts by content hash, the raw inputs, every product
  (files by reference, with sha256 and size; stale ones say why) and one ``CreateAction``
  per job, with its inputs as ``object`` and its products as ``result``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prov.model import ProvDocument

NAMESPACE = "https://wfe.invalid/ns#"


def _pid(item: Mapping[str, Any]) -> str:
    if item.get("kind") == "catalog":
        return f"wfe:raw/{item.get('sha256') or item['path']}"
    return f"wfe:product/{item['id']}"


def prov_document(chain: Mapping[str, Any]) -> ProvDocument:
    """The provenance chain of one product (``provenance`` op) as a PROV document."""
    doc = ProvDocument()
    doc.add_namespace("wfe", NAMESPACE)
    seen: set[str] = set()
    _add(doc, chain, seen)
    return doc


def _add(doc: ProvDocument, item: Mapping[str, Any], seen: set[str]) -> str:
    ident = _pid(item)
    if ident in seen:
        return ident
    seen.add(ident)
    if item.get("kind") == "catalog":
        attrs: dict[str, Any] = {"wfe:path": item["path"], "prov:type": "wfe:raw"}
        if not item.get("missing"):
            attrs.update({"wfe:sha256": item["sha256"], "wfe:size": item["size"]})
        doc.entity(ident, attrs)
        return ident
    if item.get("kind") != "product" or item.get("missing"):
        doc.entity(ident, {"prov:type": "wfe:missing"})
        return ident
    attrs = {
        "wfe:path": item["path"],
        "wfe:type": item["type"],
        "wfe:sha256": item["sha256"],
        "wfe:size": item["size"],
        "wfe:stage": item["stage"],
        "wfe:request": item["request"],
        "prov:type": "wfe:product",
    }
    if item.get("version"):
        attrs["wfe:version"] = item["version"]
    if item.get("stale"):
        attrs["wfe:stale"] = item["stale"]
    entity = doc.entity(ident, attrs)
    made = item["made_by"]
    job = doc.activity(
        f"wfe:job/{made['job']}",
        other_attributes={
            "wfe:rscript": made.get("rscript") or "",
            "wfe:state": made.get("state") or "",
        },
    )
    plan = doc.entity(
        f"wfe:definition/{item['definition']}",
        {"prov:type": "prov:Plan", "wfe:name": item.get("definition_name") or ""},
    )
    if made.get("agent"):
        agent = doc.agent(f"wfe:agent/{made['agent']}")
        doc.wasAssociatedWith(job, agent, plan)
    doc.wasGeneratedBy(entity, job)
    for source in item.get("from") or ():
        ref = _add(doc, source, seen)
        doc.used(job, ref)
        doc.wasDerivedFrom(entity, ref)
    return ident


def prov_json(chain: Mapping[str, Any]) -> str:
    """``prov_document(chain)`` serialised as PROV-JSON."""
    text = prov_document(chain).serialize(format="json")
    assert text is not None  # serialize returns the text when given no destination
    return str(text)


def _walk(chain: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    yield chain
    for source in chain.get("from") or ():
        yield from _walk(source)


def _file_uri(path: str) -> str:
    return Path(path).resolve().as_uri()


def write_ro_crate(
    directory: str | Path,
    record: Mapping[str, Any],
    products: Sequence[Mapping[str, Any]],
    chains: Sequence[Mapping[str, Any]],
) -> Path:
    """Write an RO-Crate describing request ``record`` into ``directory`` (made if new);
    ``products`` are its product rows, ``chains`` their provenance. Files are referenced by
    ``file://`` URI, not copied. Returns the path of ``ro-crate-metadata.json``."""
    from rocrate.model.contextentity import ContextEntity
    from rocrate.rocrate import ROCrate

    crate = ROCrate()
    crate.name = f"wfe request {record['id']}"
    crate.description = f"workflow {record['workflow']} run by {record['user']}"
    definition = crate.add(
        ContextEntity(
            crate,
            f"#definition-{record['definition']}",
            properties={
                "@type": ["CreativeWork", "HowTo"],
                "name": f"definition of {record['workflow']}",
                "sha256": record["definition"],
            },
        )
    )
    scripts: dict[str, Any] = {}
    for name, entry in sorted(record.get("scripts", {}).items()):
        ident = f"#script-{entry.get('sha256') or entry['key']}"
        scripts[name] = crate.add(
            ContextEntity(
                crate,
                ident,
                properties={
                    "@type": "SoftwareSourceCode",
                    "name": name,
                    "identifier": entry["key"],
                    **({"sha256": entry["sha256"]} if entry.get("sha256") else {}),
                },
            )
        )
    files: dict[str, Any] = {}

    def file_of(item: Mapping[str, Any]) -> Any:
        ident = _pid(item)
        if ident in files:
            return files[ident]
        props: dict[str, Any] = {"name": Path(item.get("path") or ident).name}
        if item.get("kind") == "catalog":
            props["description"] = "raw input (catalog entry)"
        else:
            props.update(
                {
                    "description": f"{item['type']} product {item['id']} of stage {item['stage']}",
                    "identifier": item["id"],
                }
            )
            for key in ("version", "stale", "purged_at"):
                if item.get(key):
                    props[key] = item[key]
        if item.get("sha256"):
            props.update(sha256=item["sha256"], contentSize=str(item.get("size", "")))
        entity = crate.add_file(_file_uri(item["path"]), properties=props)
        files[ident] = entity
        return entity

    jobs: dict[str, dict[str, Any]] = {}
    for chain in chains:
        for item in _walk(chain):
            if item.get("kind") not in ("product", "catalog") or item.get("missing"):
                continue
            entity = file_of(item)
            if item.get("kind") != "product" or item["request"] != record["id"]:
                continue
            made = item["made_by"]
            job = jobs.setdefault(
                made["job"],
                {
                    "rscript": made.get("rscript"),
                    "stage": item["stage"],
                    "object": {},
                    "result": {},
                },
            )
            job["result"][_pid(item)] = entity
            for source in item.get("from") or ():
                if source.get("kind") in ("product", "catalog") and not source.get("missing"):
                    job["object"][_pid(source)] = file_of(source)
    for product in products:
        file_of({"kind": "product", **product})
    by_key = {entry["key"]: scripts[name] for name, entry in record.get("scripts", {}).items()}
    for job_id, job in sorted(jobs.items()):
        instrument = by_key.get(job["rscript"]) or definition
        crate.add_action(
            instrument,
            identifier=f"#job-{job_id}",
            object=list(job["object"].values()),
            result=list(job["result"].values()),
            properties={"name": f"job {job_id} of stage {job['stage']}"},
        )
    target = Path(directory)
    crate.write(target)
    return target / "ro-crate-metadata.json"
