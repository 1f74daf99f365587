"""Is the web console still quick with 10,000 jobs? Time to first render and to open a job.

Run from the repository root: ``python -m bench.web_console [--roots N] [--children N]
[--rounds N]``. Two engines run side by side on loopback, each with its console: one with a
single root job of the same shape (the baseline), one seeded with ``--roots`` finished root jobs of ``--children`` RScript
jobs each (1,000 x 10 by default: 11,000 jobs), written straight into its repository. One
headless Chromium opens the page of each in turn, round after round (empty, seeded, empty,
...), so a drift in the machine's load shows in both. Per round, measured in the page with
``performance.now()`` and checked every animation frame:

* first render: from the Connect click to the jobs list holding its first page of rows;
* open a job: from setting ``#/job/<root>`` to its tree (all its jobs) and its timeline shown.

Printed: per engine the median and the worst of each, and the load average before and after.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from bench._common import machine, machine_line, wait_for_agents, workspace
from tests.engine.console.test_browser import CHROMIUM, Page, browser, open_page
from wfe.engine.console.api import serve_api
from wfe.engine.keys import read_token
from wfe.engine.repository import Tx
from wfe.engine.repository import jobs as job_rows
from wfe.engine.repository.jobs import JobState, NewJob
from wfe.engine.runtime.daemon import Engine, open_engine

PAGE_ROWS = 100  # the page's list size (console.js PAGE)


async def seed(engine: Engine, roots: int, children: int) -> str:
    """Write ``roots`` succeeded root actions with ``children`` succeeded RScript jobs each;
    return the id of the last root."""
    last = ""
    for start in range(0, roots, 100):

        def batch(tx: Tx, start: int = start) -> str:
            made = ""
            for _ in range(start, min(roots, start + 100)):
                root, _ = job_rows.insert_job(
                    tx,
                    NewJob(kind="action", name="bench.root", params={}, state=JobState.SUCCEEDED),
                )
                for n in range(children):
                    job_rows.insert_job(tx, NewJob(
                        kind="rscript", name=f"bench.step{n}", params={}, parent_id=root.id,
                        root_id=root.id, call_seq=n + 1, state=JobState.SUCCEEDED))  # fmt: skip
                made = root.id
            return made

        last = await engine.repo.write(batch)
    return last


async def first_render(page: Page, token: str, rows: int) -> float:
    """Milliseconds from Connect to the jobs list's first page (``rows`` rows) shown."""
    await page.fill("token", token)
    return float(
        await page.js(
            "new Promise(done => { const t0 = performance.now();"
            " document.getElementById('connect').click();"
            " const check = () => document.querySelectorAll('#jobs tbody tr').length >= "
            + str(rows)
            + " ? done(performance.now() - t0) : requestAnimationFrame(check); check(); })"
        )
    )


async def open_job(page: Page, job: str, jobs_in_tree: int) -> float:
    """Milliseconds from setting the job's route to its tree and timeline shown."""
    return float(
        await page.js(
            "new Promise(done => { const t0 = performance.now();"
            f" location.hash = '#/job/{job}';"
            " const check = () => (document.getElementById('detail-id').textContent === '"
            + job
            + "' && document.querySelectorAll('#job-tree li[data-job]').length === "
            + str(jobs_in_tree)
            + " && document.querySelector('#job-timeline p, #job-timeline svg'))"
            " ? done(performance.now() - t0) : requestAnimationFrame(check); check(); })"
        )
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"machine": machine(), "roots": args.roots, "children": args.children}
    times: dict[str, dict[str, list[float]]] = {
        case: {"first_render_ms": [], "open_job_ms": []} for case in ("empty", "seeded")
    }
    with tempfile.TemporaryDirectory() as tmp:
        root_dir = Path(tmp)
        async with trio.open_nursery() as nursery:
            engines: dict[str, tuple[str, str, str, int, int]] = {}
            for case in ("empty", "seeded"):
                config = workspace(root_dir / case, agents=1)
                engine = await nursery.start(_run_engine, config)
                token = read_token(config)
                port = await nursery.start(_serve, engine, token)
                roots = args.roots if case == "seeded" else 1  # empty: one root of the same shape
                job = await seed(engine, roots, args.children)
                tree = args.children + 1
                rows = min(PAGE_ROWS, roots * tree)
                engines[case] = (f"http://127.0.0.1:{port}/", token, job, tree, rows)
            async with browser(root_dir / "profile") as ws:
                for _ in range(args.rounds):
                    for case, (url, token, job, tree, rows) in engines.items():
                        page = await open_page(ws, url)
                        times[case]["first_render_ms"].append(await first_render(page, token, rows))
                        times[case]["open_job_ms"].append(await open_job(page, job, tree))
                        await page.js("sessionStorage.clear()")
            nursery.cancel_scope.cancel()
    for case, measured in times.items():
        figures[case] = {
            name: {
                "median": round(statistics.median(v), 1),
                "max": round(max(v), 1),
                "all": [round(x, 1) for x in v],
            }
            for name, v in measured.items()
        }
    figures["machine"]["loadavg_after"] = round(os.getloadavg()[0], 2)
    return figures


async def _run_engine(config: Any, task_status: trio.TaskStatus[Engine]) -> None:
    async with open_engine(config) as engine:
        await wait_for_agents(engine, 1)
        task_status.started(engine)
        await trio.sleep_forever()


async def _serve(engine: Engine, token: str, task_status: trio.TaskStatus[int]) -> None:
    await serve_api(engine, host="127.0.0.1", port=0, token=token, task_status=task_status)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roots", type=int, default=1000)
    parser.add_argument("--children", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("chromium is not installed")
    figures = trio.run(main, args)
    print(machine_line(figures["machine"]))
    print(
        f"{args.roots} roots x {args.children} children = {args.roots * (args.children + 1)} jobs seeded"
    )
    print("repository  first render ms (median / max)  open a job ms (median / max)")
    for case in ("empty", "seeded"):
        f = figures[case]
        print(f"{case:10}  {f['first_render_ms']['median']:>8} / {f['first_render_ms']['max']:<8}"
              f"             {f['open_job_ms']['median']:>8} / {f['open_job_ms']['max']}")  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    cli()
