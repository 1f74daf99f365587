"""The example pipeline runs to completed through a real engine and local agents, with
the one documented command, and prints its products' provenance."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

RUN = Path(__file__).resolve().parents[3] / "examples" / "pipeline" / "run.py"


@pytest.mark.slow
async def test_the_example_pipeline_completes_and_prints_provenance(tmp_path: Path) -> None:
    """calibrate -> grid -> map on generated data: 8 raw inputs in 4 calibrate jobs, 2 grid
    jobs, 1 map; the map's provenance goes back to the raw files."""
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, str(RUN), "--workspace", str(tmp_path / "ws"), "--user", "tester"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "pipeline-tester-0001 completed" in out
    assert "calibrate  done   8 processed" in out
    assert "grid       done   8 processed" in out
    assert "map        done   2 processed" in out
    provenance = out[out.index("provenance of p") :]
    raw = {line.split()[1] for line in provenance.splitlines() if line.strip().startswith("raw ")}
    assert len(raw) == 8 and all("/data/raw_r01" in path for path in raw)
    assert "made by job" in provenance and "examples/example_map@" in provenance
    products = sorted((tmp_path / "ws" / "products" / "pipeline-tester-0001").glob("*/*/*"))
    assert {p.parent.parent.name for p in products} == {"calibrate", "grid", "map"}
