"""Products: what a job's result reports becomes product records; and their provenance.

A product is a file a stage's job made, as its RScript reported it in the result
(``wfe.rscripts.results``: path, type, size, sha256, metadata). The record links it to the job
and batch that made it, the inputs the batch held (catalog entries or upstream products)
and the sha256 of the expanded definition the request ran. ``provenance`` (its SQL in
``wfe.engine.repository.products``) follows those links back to the raw catalog entries.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from wfe.engine.repository.products import list_products, provenance
from wfe.engine.repository.rowtypes import JsonValue
from wfe.rscripts.errors import ResultError
from wfe.rscripts.results import Product, check_result

__all__ = ["from_inputs", "from_result", "list_products", "provenance", "render_provenance"]


def from_result(result: JsonValue, *, script: str, output_dir: str | None) -> list[Product]:
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


def from_inputs(product: Product, paths: Mapping[str, str], job: str) -> list[str]:
    """The input keys a product's ``from`` names (its batch's inputs, by path); empty when
    it names none (it then comes from every input). Raises ``ResultError`` for a path that
    is not one of the batch's inputs."""
    keys = []
    for path in product.from_inputs:
        key = paths.get(path) or paths.get(os.path.normpath(path))
        if key is None:
            raise ResultError(
                job, f"product {product.path}: from names {path!r}, not an input of this job"
            )
        keys.append(key)
    return keys


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
    marks = "".join(
        [
            ", file purged" if chain.get("purged_at") else "",
            f", stale: {chain['stale']}" if chain.get("stale") else "",
        ]
    )
    lines = [
        f"{indent}{chain['id']} {chain['type']} {chain['path']} ({chain['size']} B, sha256 {chain['sha256'][:12]}…{marks})",
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
