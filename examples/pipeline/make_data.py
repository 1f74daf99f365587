"""Generate small synthetic detector timestreams for the example pipeline.

    python3 examples/pipeline/make_data.py DIR [--runs 4] [--first-run 100] [--samples 400]

writes, in DIR:

* ``raw_rNNNN_dX.csv``: one timestream per run and detector (A, B, C): columns
  ``t,ra,dec,counts`` after ``# key: value`` comment lines repeating the metadata. The sky
  holds one bright point source at (ra, dec) = (11.0, 0.0) on a flat background; counts
  are ``2 * sky + 100`` plus noise, so the pipeline's calibration (gain 0.5, offset 100)
  recovers the sky.
* ``dark_rNNNN.csv``: a dark frame per run (kind ``dark``), and one raw run *before*
  ``--first-run``: files the example query must leave out.
* ``FILE.meta.json`` beside every file: its metadata (kind, run, detector, source, date,
  glitches: the number of injected spikes),
  the form ``wfe catalog add`` can register; and ``catalog.json`` listing all of them.

Deterministic for a given ``--seed``. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

SOURCE = (11.0, 0.0)  # ra, dec of the point source, degrees
DETECTORS = ("A", "B", "C")


def sky(ra: float, dec: float) -> float:
    """The true sky brightness at (ra, dec): background 10 plus a Gaussian source."""
    r2 = (ra - SOURCE[0]) ** 2 + (dec - SOURCE[1]) ** 2
    return 10.0 + 50.0 * math.exp(-r2 / (2 * 0.3**2))


def write_timestream(
    path: Path, meta: dict[str, Any], rng: random.Random, samples: int, dark: bool
) -> None:
    """One CSV file of a raster scan across the source (or a dark frame).

    Adds ``glitches`` (how many one-sample spikes were injected) to ``meta``.
    """
    rows = []
    glitches = 0
    for i in range(samples):
        # A raster: ra sweeps back and forth, dec steps slowly.
        sweep = (i % 40) / 39.0
        row = i // 40
        ra = 10.0 + 2.0 * (sweep if row % 2 == 0 else 1.0 - sweep) + rng.uniform(-0.002, 0.002)
        dec = -1.0 + 2.0 * row / max(1, (samples - 1) // 40) + rng.uniform(-0.002, 0.002)
        signal = 0.0 if dark else sky(ra, dec)
        counts = 2.0 * signal + 100.0 + rng.gauss(0.0, 1.0)
        if not dark and 0 < i < samples - 1 and rng.random() < 0.01:
            counts += 500.0  # a cosmic-ray glitch for the calibration to flag
            glitches += 1
        rows.append(f"{i * 0.1:.1f},{ra:.5f},{dec:.5f},{counts:.3f}")
    meta["glitches"] = glitches
    lines = [f"# {key}: {value}" for key, value in meta.items()]
    path.write_text("\n".join([*lines, "t,ra,dec,counts", *rows]) + "\n", encoding="utf-8")


def make(out: Path, *, runs: int, first_run: int, samples: int, seed: int) -> list[dict[str, Any]]:
    """Write the data set into ``out``; return the catalog entries written."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    day = datetime.date(2024, 5, 1)
    plan: list[tuple[str, dict[str, Any], bool]] = []
    for run in [first_run - 1, *range(first_run, first_run + runs)]:
        date = (day + datetime.timedelta(days=run - first_run + 1)).isoformat()
        for det in DETECTORS:
            meta = {"kind": "raw", "run": run, "detector": det, "source": "SRC1", "date": date}
            plan.append((f"raw_r{run:04d}_d{det}.csv", meta, False))
        meta = {"kind": "dark", "run": run, "detector": "A", "source": "none", "date": date}
        plan.append((f"dark_r{run:04d}.csv", meta, True))
    catalog = []
    for name, meta, dark in plan:
        path = out / name
        write_timestream(path, meta, rng, samples, dark)
        (out / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        catalog.append({"path": str(path.resolve()), "metadata": meta})
    (out / "catalog.json").write_text(json.dumps(catalog, indent=2) + "\n", encoding="utf-8")
    return catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the files into")
    parser.add_argument("--runs", type=int, default=4, help="runs from --first-run on (4)")
    parser.add_argument("--first-run", type=int, default=100, help="first run number (100)")
    parser.add_argument("--samples", type=int, default=400, help="samples per file (400)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.samples < 40:
        parser.error("need --runs >= 1 and --samples >= 40")
    catalog = make(
        args.out, runs=args.runs, first_run=args.first_run, samples=args.samples, seed=args.seed
    )
    print(f"wrote {len(catalog)} files and catalog.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
