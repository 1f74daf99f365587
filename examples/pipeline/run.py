"""Run the example pipeline end to end through a real engine and two local agents.

    python3 examples/pipeline/run.py [--workspace DIR] [--runs 4] [--user NAME]

Makes a workspace (``wfe.toml``, keys), generates the data (``make_data.py``), starts an
engine in this process with its local agents, catalogues the data files, submits
``pipeline.toml`` (with the RScripts in ``rscripts/`` beside it), waits for the request
to end, and prints the request, its products and the provenance of the map. Exits 0 when
the request completed. The workspace is kept (its path is printed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a fresh clone without installing

import trio  # noqa: E402

from wfe.engine.cli.demo import make_workspace  # noqa: E402
from wfe.engine.cli.render import print_table  # noqa: E402
from wfe.engine.cli.requests import render_request, submission  # noqa: E402
from wfe.engine.repository import request_views as views  # noqa: E402
from wfe.engine.requests import catalog, products  # noqa: E402
from wfe.engine.runtime.daemon import open_engine  # noqa: E402

sys.path.insert(0, str(HERE))
import make_data  # noqa: E402


async def run(workspace: Path, *, runs: int, user: str, patience: float) -> bool:
    config = make_workspace(workspace, agents=2)
    data = workspace / "data"
    make_data.make(data, runs=runs, first_run=100, samples=400, seed=1)
    files = sorted(str(p) for p in data.glob("*.csv"))
    payload = submission(HERE / "pipeline.toml", user=user)
    async with open_engine(config) as engine:
        assert engine.requests is not None
        entries = await catalog.describe_files(files)
        await engine.repo.write(catalog.add_entries(entries))
        print(f"catalogued {len(entries)} files from {data}")
        record = await engine.requests.submit(
            expanded=payload["expanded"],
            user=payload["user"],
            sources=payload["sources"],
            git=payload["git"],
            scripts_text=payload["scripts"],
            params=payload["params"],
        )
        print(f"submitted {record.id}")
        with trio.fail_after(patience):
            record = await engine.requests.wait(record.id)
        print(render_request(await engine.repo.read(views.request_detail(record.id))))
        made = await engine.repo.read(products.list_products(record.id))
        print_table(
            [
                {"product": p["id"], "stage": p["stage"], "type": p["type"], "path": p["path"]}
                for p in made
            ]
        )
        maps = [p for p in made if p["stage"] == "map" and p["type"] == "science"]
        if maps:
            chain = await engine.repo.read(products.provenance(maps[0]["id"]))
            print(f"\nprovenance of {maps[0]['id']}:")
            print("\n".join(products.render_provenance(chain)))
    print(f"\n{record.id} {record.state.value}; workspace {workspace}")
    return record.state.value == "completed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workspace", type=Path, help="where to work (default: a new temporary directory)"
    )
    parser.add_argument("--runs", type=int, default=4, help="runs of data to generate (4)")
    parser.add_argument(
        "--user", default="example", help="the submitting user (part of the request id)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the request"
    )
    args = parser.parse_args(argv)
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="wfe-pipeline-"))
    ok = trio.run(
        lambda: run(workspace.resolve(), runs=args.runs, user=args.user, patience=args.timeout)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
