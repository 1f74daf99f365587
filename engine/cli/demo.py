"""``wfe demo``: a real workflow on a temporary workspace, with nothing installed but wfe.

It writes a workspace (``wfe.toml``, keys, token), starts an engine in this process with two
local agents, runs the root action ``demo.survey`` (which makes sample files and fans out
to one ``demo.inspect`` actor action per file, each running two RScripts on the agents),
shows progress while it runs, and prints a summary table. Exits 0 when every job succeeded.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from wfe.engine.cli.render import is_terminal, print_table, seconds, show
from wfe.engine.config import CONFIG_NAME, DEFAULT_TOML, Config, load_config
from wfe.engine.job_states import TERMINAL, JobState
from wfe.engine.keys import create_secrets
from wfe.engine.repository import queries
from wfe.engine.runtime.daemon import open_engine


def make_workspace(directory: Path, *, agents: int, slots: int = 2) -> Config:
    """Write a ready-to-run workspace into ``directory`` and return its configuration."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    path.write_text(DEFAULT_TOML.format(port=0, local=agents, slots=slots))
    config = load_config(path)
    create_secrets(config)
    return config


def run_demo(*, files: int, agents: int, keep: bool = True, seconds_per_job: float = 0.2) -> int:
    workspace = Path(tempfile.mkdtemp(prefix="wfe-demo-"))
    config = make_workspace(workspace, agents=agents)
    print(
        f"wfe demo: workspace {workspace}, {agents} local agents, {files} files -> {2 * files + 1} RScripts"
    )
    try:
        ok = trio.run(_demo, config, files, seconds_per_job)
    finally:
        if not keep:
            shutil.rmtree(workspace, ignore_errors=True)
    return 0 if ok else 1


async def _wait_for_agents(engine: Any, count: int) -> None:
    with trio.fail_after(30):
        while sum(1 for a in engine.agents() if a["state"] == "connected") < count:  # noqa: ASYNC110
            await trio.sleep(0.05)  # a snapshot to poll: the registry has no event for this


async def _demo(config: Config, files: int, seconds_per_job: float) -> bool:
    started = trio.current_time()
    async with open_engine(config) as engine:
        await _wait_for_agents(engine, config.agents.local)
        job_id = await engine.run_action(
            "demo.survey",
            {"files": files, "seconds": seconds_per_job, "data_dir": str(config.root / "data")},
        )
        print(f"started {job_id} (demo.survey)")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_progress, engine, job_id, 2 * files + 1)
            outcome = await engine.wait(job_id)
            nursery.cancel_scope.cancel()
        rows = await engine.repo.read(queries.tree_summary(job_id))
        detail = await engine.job(job_id)
    elapsed = trio.current_time() - started
    _summary(config, rows, detail, elapsed)
    return outcome.state is JobState.SUCCEEDED and all(
        r["state"] == JobState.SUCCEEDED for r in rows
    )


def progress_line(rows: list[dict[str, Any]]) -> str:
    """How far the RScripts of the demo have got, with what each agent runs."""
    states = Counter(r["state"] for r in rows)
    per_agent = Counter(r["agent"] for r in rows if r["state"] == JobState.RUNNING and r["agent"])
    return (
        f"rscripts: {states[JobState.SUCCEEDED]} succeeded, {states[JobState.RUNNING]} running,"
        f" {states[JobState.QUEUED]} queued, {states[JobState.FAILED]} failed"
        + (
            f"  [{', '.join(f'{a}: {n}' for a, n in sorted(per_agent.items()))}]"
            if per_agent
            else ""
        )
    )


async def _progress(engine: Any, job_id: str, total: int) -> None:
    """A rich progress bar on a terminal; a plain line a second otherwise."""
    if not is_terminal():
        while True:
            rows = await engine.repo.read(queries.tree_summary(job_id))
            print(f"  {progress_line(rows)}", flush=True)
            await trio.sleep(1.0)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("rscripts", total=total)
        while True:
            rows = await engine.repo.read(queries.tree_summary(job_id))
            ended = sum(1 for r in rows if r["state"] in TERMINAL)
            bar.update(task, completed=ended, description=progress_line(rows))
            await trio.sleep(0.2)


def _summary(
    config: Config, rows: list[dict[str, Any]], detail: dict[str, Any], elapsed: float
) -> None:
    print_table(
        [
            {
                "job": r["id"],
                "rscript": r["name"],
                "state": r["state"],
                "exit": r["exit_code"],
                "attempt": r["attempt"],
                "agent": r["agent"],
                "duration": seconds(r["duration"]),
            }
            for r in rows
        ]
    )
    states = Counter(r["state"] for r in rows)
    agents = Counter(r["agent"] for r in rows)
    print()
    print(
        f"{detail['id']} demo.survey: {detail['state']}"
        + (f" ({detail['error']})" if detail["error"] else "")
    )
    if detail.get("result"):
        print(f"result: {show(detail['result'])}")
    print(f"rscript jobs: {len(rows)} ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))})")
    print(f"per agent: {', '.join(f'{a}: {n}' for a, n in sorted(agents.items(), key=str))}")
    print(f"wall time: {elapsed:.1f} s")
    print(f"repository: {config.repository_path}")
