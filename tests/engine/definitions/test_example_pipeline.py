"""The example pipeline end to end, without the engine: generate data, select it with the
definition's query, and run each stage's RScript standalone with WFE_PARAMS/WFE_RESULT,
batching inputs by ``max_inputs`` the way the scheduler will."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wfe.engine.definitions import (
    INPUTS_PARAM,
    check_rscripts,
    load_definition,
    resolve_params,
    stage_params,
    topological_order,
)
from wfe.rscripts import ScriptLibrary, check_result, read_script, validate_params

PIPELINE = Path(__file__).resolve().parents[3] / "examples" / "pipeline"


def run_script(name: str, params: dict[str, Any], job: Path) -> dict[str, Any]:
    """Run one RScript as an agent would; return its checked result as a dict."""
    job.mkdir(parents=True)
    (job / "params.json").write_text(json.dumps(params))
    env = {
        **os.environ,
        "WFE_PARAMS": str(job / "params.json"),
        "WFE_RESULT": str(job / "result.json"),
        "WFE_OUTPUT_DIR": str(job / "out"),
    }
    done = subprocess.run(
        [sys.executable, str(PIPELINE / "rscripts" / f"{name}.py")],
        env=env,
        cwd=job,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads((job / "result.json").read_text())
    check_result(result, script=name)
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    subprocess.run(
        [sys.executable, str(PIPELINE / "make_data.py"), str(out), "--runs", "3"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def test_rscript_headers_are_valid_and_every_stage_script_is_known() -> None:
    """The example scripts parse as RScripts, and the definition names only them."""
    scripts = [read_script(p) for p in sorted((PIPELINE / "rscripts").glob("*.py"))]
    library = ScriptLibrary(scripts)
    definition = load_definition(PIPELINE / "pipeline.toml")
    assert check_rscripts(definition, library.__contains__) == []
    for stage in definition.stages:
        assert stage.rscript is not None
        header = library.get(stage.rscript).header
        params = stage_params(definition, stage.name, resolve_params(definition, {}))
        validate_params(header, {**params, INPUTS_PARAM: ["x"]})


def test_make_data_writes_files_sidecars_and_a_catalog(data: Path) -> None:
    """Every catalog entry exists with its metadata beside it; some entries are there
    for the query to leave out."""
    catalog = json.loads((data / "catalog.json").read_text())
    assert len(catalog) == 4 * 4  # runs 99..102, 3 detectors + a dark frame each
    for entry in catalog:
        path = Path(entry["path"])
        assert path.is_file()
        assert json.loads(Path(f"{path}.meta.json").read_text()) == entry["metadata"]
    definition = load_definition(PIPELINE / "pipeline.toml")
    assert definition.query is not None
    selected = [e for e in catalog if definition.query.matches(e["metadata"])]
    assert sorted(Path(e["path"]).name for e in selected) == [
        f"raw_r{run:04d}_d{det}.csv" for run in (100, 101, 102) for det in "AB"
    ]


def test_pipeline_runs_standalone_and_finds_the_source(data: Path, tmp_path: Path) -> None:
    """calibrate -> grid -> map: every product is reported with a true size and sha256,
    the calibration flags exactly the injected glitches, and the map peaks at the source."""
    definition = load_definition(PIPELINE / "pipeline.toml")
    assert definition.query is not None
    catalog = json.loads((data / "catalog.json").read_text())
    raw = [e for e in catalog if definition.query.matches(e["metadata"])]
    request = resolve_params(definition, {})
    products: dict[str, list[dict[str, Any]]] = {}
    jobs: dict[str, int] = {}
    for name in topological_order(definition):
        stage = definition.stage(name)
        assert stage.consumes is not None and stage.rscript is not None
        if stage.consumes.from_query:
            pool = raw
        else:
            pool = [
                p
                for p in products[stage.consumes.source]
                if not stage.consumes.types or p["type"] in stage.consumes.types
            ]
        size = stage.max_inputs or len(pool)
        products[name] = []
        batches = [pool[i : i + size] for i in range(0, len(pool), size)]
        jobs[name] = len(batches)
        for number, batch in enumerate(batches):
            inputs = [{"path": p["path"], "metadata": p["metadata"]} for p in batch]
            params = {**stage_params(definition, name, request), INPUTS_PARAM: inputs}
            result = run_script(stage.rscript, params, tmp_path / f"{name}-{number}")
            products[name] += result["products"]

    assert jobs == {"calibrate": 3, "grid": 2, "map": 1}
    for product in (p for ps in products.values() for p in ps):
        content = Path(product["path"]).read_bytes()
        assert product["size"] == len(content)
        assert product["sha256"] == hashlib.sha256(content).hexdigest()

    science = [p for p in products["calibrate"] if p["type"] == "science"]
    assert len(science) == len(raw) == len([p for p in products["calibrate"] if p["type"] == "qa"])
    assert sum(p["metadata"]["flagged"] for p in science) == sum(
        e["metadata"]["glitches"] for e in raw
    )
    (the_map,) = [p for p in products["map"] if p["type"] == "science"]
    peak = the_map["metadata"]["peak"]
    cell = request["cell"]
    assert math.dist((peak["ra"], peak["dec"]), (11.0, 0.0)) <= cell * math.sqrt(2)
    assert the_map["metadata"]["runs"] == [100, 101, 102]
    assert [p["type"] for p in products["map"]] == ["science", "plot"]
    assert Path(products["map"][1]["path"]).read_text().startswith("P2\n")
