"""The standing example runs with its one documented command: files dropped into the
catalog are calibrated and mapped without resubmission, a new calibration script
reprocesses the calibrated files and the map only, and every check it prints holds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

RUN = Path(__file__).resolve().parents[3] / "examples" / "standing" / "run.py"


@pytest.mark.slow
async def test_the_standing_example_reprocesses_only_what_changed(tmp_path: Path) -> None:
    """Four files half a second apart: eight calibration rounds (four per version), maps
    at least 4 s apart, stale products of calibrate and map only, all checks ok."""
    with trio.fail_after(150):
        done = await trio.run_process(
            [sys.executable, str(RUN), "--files", "4", "--every", "0.5",
             "--workspace", str(tmp_path / "ws")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )  # fmt: skip
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert out.count("ok   ") == 4 and "FAIL" not in out
    rounds = out[out.index("rounds (batches)") : out.index("stale products")]
    assert rounds.count("calibrate") == 8
    stale = out[out.index("stale products") : out.index("provenance of the map")]
    assert stale.count(" calibrate ") == 4
    assert "standing-example-0001 cancelled" in out
