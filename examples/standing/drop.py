"""Drop new raw files into the catalog every few seconds, as an archive would.

    python3 examples/standing/drop.py DATA_DIR [--count 6] [--every 3] [--field A] [--config wfe.toml]

Writes ``raw_NNN.txt`` (a few samples) with a ``.meta.json`` sidecar (``kind = "raw"``,
``field``) into DATA_DIR and catalogues each with ``wfe catalog add`` against the engine of
``--config``. ``run.py`` uses ``write_raw`` directly.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path


def write_raw(directory: Path, number: int, *, field: str, samples: int = 8) -> Path:
    """Write raw file ``number`` of ``field`` with its metadata sidecar; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(number)
    path = directory / f"raw_{number:03d}.txt"
    path.write_text("".join(f"{rng.uniform(90, 110):.3f}\n" for _ in range(samples)))
    meta = {"kind": "raw", "field": field, "number": number}
    path.with_name(path.name + ".meta.json").write_text(json.dumps(meta))
    return path.resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--every", type=float, default=3.0, help="seconds between files")
    parser.add_argument("--field", default="A")
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--config", help="the engine's wfe.toml")
    args = parser.parse_args(argv)
    for n in range(args.first, args.first + args.count):
        path = write_raw(args.data, n, field=args.field)
        command = [sys.executable, "-m", "wfe", "catalog", "add", str(path)]
        if args.config:
            command += ["--config", args.config]
        subprocess.run(command, check=True)
        print(f"dropped {path}", flush=True)
        if n < args.first + args.count - 1:
            time.sleep(args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
