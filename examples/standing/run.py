"""Run the standing pipeline example end to end through a real engine and two local agents.

    python3 examples/standing/run.py [--files 6] [--every 1.0] [--workspace DIR]

Starts an engine in this process, submits ``standing.toml`` (trigger continuous) before
any data exists, then drops a raw file into the catalog every ``--every`` seconds: each is
calibrated at once, and the map of the field is made at most once per 4 s cooldown from
every calibrated file so far. Then it submits a changed calibration script
(``GAIN = 1.1``) to the running request (``wfe submit --update`` does the same): the
calibrated files and the map are made again, nothing else. It prints the timeline of
rounds, the stale products and the provenance of the final map, checks what happened,
cancels the request and exits 0 when every check held. The workspace is kept.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a fresh clone without installing

import trio  # noqa: E402

from wfe.engine.cli.demo import make_workspace  # noqa: E402
from wfe.engine.cli.requests import submission  # noqa: E402
from wfe.engine.repository import request_views as views  # noqa: E402
from wfe.engine.requests import catalog, products  # noqa: E402
from wfe.engine.runtime.daemon import Engine, open_engine  # noqa: E402
from wfe.protocols.request import RequestVerb  # noqa: E402

sys.path.insert(0, str(HERE))
import drop  # noqa: E402

COOLDOWN = 4.0  # the map's cooldown in standing.toml


async def until(
    engine: Engine, what: str, check: Callable[[], Awaitable[Any]], patience: float
) -> Any:
    """``check()`` after every committed event until it answers something truthy."""
    with trio.move_on_after(patience):
        async with engine.repo.subscribe() as events:
            if found := await check():
                return found
            async for _ in events:
                if found := await check():
                    return found
    raise SystemExit(f"timed out waiting for {what}")


def copy_definition(target: Path, gain: str) -> Path:
    """The example's definition and scripts in ``target``, with calibration ``GAIN = gain``."""
    shutil.copytree(HERE / "rscripts", target / "rscripts", dirs_exist_ok=True)
    script = target / "rscripts" / "standing_calibrate.py"
    script.write_text(script.read_text().replace("GAIN = 1.0", f"GAIN = {gain}"))
    shutil.copy(HERE / "standing.toml", target / "standing.toml")
    return target / "standing.toml"


async def run(workspace: Path, *, files: int, every: float, patience: float) -> bool:
    config = make_workspace(workspace, agents=2)
    data = workspace / "data"
    v1 = submission(copy_definition(workspace / "v1", "1.0"), user="example")
    async with open_engine(config) as engine:
        service = engine.requests
        assert service is not None
        record = await service.submit(
            expanded=v1["expanded"], user="example", sources=v1["sources"],
            git=v1["git"], scripts_text=v1["scripts"],
        )  # fmt: skip
        rid = record.id
        t0 = trio.current_time()
        print(f"submitted {rid} (trigger continuous) before any data; state {record.state.value}")

        async def current(stage: str) -> list[dict[str, Any]]:
            made = await engine.repo.read(products.list_products(rid))
            return [p for p in made if p["stage"] == stage and not p["stale"]]

        async def settled(gain: float) -> bool:
            detail = await engine.repo.read(views.request_detail(rid))
            if any(j["state"] in ("queued", "running") for j in detail["jobs"]):
                return False
            if any(s["inputs"].get("unallocated") for s in detail["stages"]):
                return False
            cal = await current("calibrate")
            maps = await current("map")
            return (
                len(cal) == files
                and all(p["metadata"]["gain"] == gain for p in cal)
                and len(maps) == 1
                and maps[0]["metadata"]["files"] == files
            )

        for n in range(1, files + 1):
            path = drop.write_raw(data, n, field="A")
            await engine.repo.write(catalog.add_entries(await catalog.describe_files([str(path)])))
            print(f"{trio.current_time() - t0:6.1f}s dropped {path.name}")
            await trio.sleep(every)
        await until(engine, "the first version to settle", lambda: settled(1.0), patience)
        print(f"{trio.current_time() - t0:6.1f}s all {files} files calibrated and mapped")

        v2 = submission(copy_definition(workspace / "v2", "1.1"), user="example")
        await service.update(
            rid, expanded=v2["expanded"], sources=v2["sources"], git=v2["git"],
            scripts_text=v2["scripts"], by="example",
        )  # fmt: skip
        print(f"{trio.current_time() - t0:6.1f}s submitted a new calibration script (GAIN = 1.1)")
        await until(engine, "the new version to settle", lambda: settled(1.1), patience)
        print(f"{trio.current_time() - t0:6.1f}s reprocessed\n")

        detail = await engine.repo.read(views.request_detail(rid, history=10_000))
        rounds = [e for e in detail["history"] if e["kind"] == "request.batch"]
        start = rounds[0]["at"]
        print("rounds (batches) as they started:")
        for e in rounds:
            print(f"  {e['at'] - start:6.1f}s  {e['stage']:<10} {len(e['inputs'])} input(s)")
        stale = [p for p in await engine.repo.read(products.list_products(rid)) if p["stale"]]
        print(f"\nstale products ({len(stale)}):")
        for p in stale:
            print(f"  {p['id']} {p['stage']:<10} {Path(p['path']).name:<16} {p['stale']}")
        final = (await current("map"))[0]
        print(f"\nprovenance of the map {final['id']}:")
        chain = await engine.repo.read(products.provenance(final["id"]))
        print("\n".join(products.render_provenance(chain)))

        cal_rounds = [e for e in rounds if e["stage"] == "calibrate"]
        map_starts = [e["at"] for e in rounds if e["stage"] == "map"]
        checks = {
            "calibration ran once per file, then once more per file for the new script": (
                len(cal_rounds) == 2 * files and all(len(e["inputs"]) == 1 for e in cal_rounds)
            ),
            f"the map started at most once per {COOLDOWN:g} s": all(
                b - a >= COOLDOWN - 0.05 for a, b in zip(map_starts, map_starts[1:], strict=False)
            ),
            "the old calibrated files and maps are stale, nothing else": {p["stage"] for p in stale}
            == {"calibrate", "map"}
            and sum(p["stage"] == "calibrate" for p in stale) == files,
            "the final map is made from every file, per input provenance": len(chain["from"])
            == files
            and all(len(item["from"]) == 1 for item in chain["from"]),
        }
        await service.act(rid, RequestVerb.CANCEL)
        print()
        for text, ok in checks.items():
            print(f"{'ok  ' if ok else 'FAIL'} {text}")
    print(f"\n{rid} cancelled; workspace {workspace}")
    return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=6, help="raw files to drop (6)")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between files (1.0)")
    parser.add_argument(
        "--workspace", type=Path, help="where to work (default: a new temporary one)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait each phase")
    args = parser.parse_args(argv)
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="wfe-standing-"))
    ok = trio.run(
        lambda: run(workspace.resolve(), files=args.files, every=args.every, patience=args.timeout)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
