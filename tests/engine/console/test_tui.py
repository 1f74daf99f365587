"""``wfe console`` in a real terminal (tmux): live tables, a job's output while it runs, and
the operator actions, against a real engine. The pure parts (keys, rendering) are tested
without a terminal."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from typing import Any

import pytest
import trio

from wfe.engine.console.tui import Model, buckets, handle_key, parse_run, render

from .conftest import GUARD, Console

TMUX = shutil.which("tmux")


def test_keys_move_the_selection_and_ask_for_operations() -> None:
    """Keys select rows, switch tabs, open a job's output, and ask before a kill."""
    model = Model(
        jobs=[{"id": "j2", "state": "running"}, {"id": "j1", "state": "succeeded"}], requests=[]
    )
    assert handle_key(model, "j") is None and model.current() == {"id": "j1", "state": "succeeded"}
    assert handle_key(model, "j") is None and model.selected["jobs"] == 1  # stops at the end
    handle_key(model, "k")
    assert handle_key(model, "\n") == ("tail", {"job": "j2"}) and model.output_job == "j2"
    assert handle_key(model, "\x1b") == ("untail", {}) and model.output_job is None
    assert handle_key(model, "x") is None and "kill j2" in model.message
    assert handle_key(model, "n") is None  # anything but y: not done (and "n" is not "run" here)
    assert "not done" in model.message
    handle_key(model, "x")
    assert handle_key(model, "y") == ("kill", {"job": "j2"})
    handle_key(model, "2")
    model.requests = [{"id": "r-a-0001"}]
    assert handle_key(model, "a") == ("approve", {"request": "r-a-0001"})
    assert handle_key(model, "c") is None and handle_key(model, "y") == (
        "cancel",
        {"request": "r-a-0001"},
    )
    assert handle_key(model, "q") == ("quit", {})


def test_the_run_prompt_parses_a_command_line() -> None:
    """`n` opens a prompt; Enter turns `rscript NAME k=v` into a run; bad input says why."""
    model = Model()
    handle_key(model, "n")
    for key in "rscript sleep_echo lines=2 message=hi":
        handle_key(model, key)
    assert handle_key(model, "\n") == (
        "run",
        {"rscript": "sleep_echo", "params": {"lines": 2, "message": "hi"}},
    )
    assert parse_run("action demo.survey files=3") == {
        "action": "demo.survey",
        "params": {"files": 3},
    }
    with pytest.raises(ValueError, match="type `rscript NAME"):
        parse_run("fly away")


def test_render_fits_the_screen_and_highlights_the_selection() -> None:
    """Every line fits the width; the selected row is the highlighted one."""
    model = Model(
        who="alice (viewer)",
        jobs=[{"id": f"j{i}", "name": "n" * 50, "state": "queued"} for i in range(40)],
    )
    model.selected["jobs"] = 30
    lines, highlight = render(model, 20, 60)
    assert len(lines) == 20 and all(len(line) < 60 for line in lines)
    assert highlight is not None and lines[highlight].startswith("j30 ")


def test_enter_on_a_request_asks_for_its_detail_and_esc_goes_back() -> None:
    """Enter on the requests tab asks for the selected request's detail; the screen shows it
    under a header naming the request; Esc returns to the table."""
    model = Model(tab="requests", requests=[{"id": "t-alice-0001", "state": "running"}])
    assert handle_key(model, "\n") == ("detail", {"request": "t-alice-0001"})
    model.detail, model.detail_of = ["stage  state", "a      running  gap 3"], "t-alice-0001"
    lines, _ = render(model, 10, 80)
    assert lines[2] == "request t-alice-0001  Esc: back"
    assert lines[3:5] == ["stage  state", "a      running  gap 3"]
    assert handle_key(model, "\x1b") is None and model.detail is None


def test_the_works_tab_shows_each_buckets_counts() -> None:
    """Key 4 opens the works tab: one row per pipeline with its queued, running, success,
    failure and cancelled counts (0 where the bucket has none)."""
    model = Model(works=buckets({"sample": {"queued": 3, "success": 12}, "add": {"running": 1}}))
    assert handle_key(model, "4") is None and model.tab == "works"
    lines, highlight = render(model, 10, 100)
    assert lines[1].startswith(" 1 jobs") and "[4 works]" in lines[1]
    assert lines[3].split() == ["PIPELINE", "QUEUED", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED"]
    assert lines[4].split() == ["add", "0", "1", "0", "0", "0"]
    assert lines[5].split() == ["sample", "3", "0", "12", "0", "0"]
    assert highlight == 4


async def tmux(*args: str, check: bool = True) -> str:
    result = await trio.run_process(
        [TMUX or "tmux", *args], capture_stdout=True, capture_stderr=True, check=check
    )
    return result.stdout.decode()


async def screen_shows(session: str, *texts: str) -> str:
    """Wait until the pane shows every one of ``texts``; return the pane."""
    while True:  # a terminal has no events to wait on: look again every 50 ms
        pane = await tmux("capture-pane", "-p", "-t", session)
        if all(t in pane for t in texts):
            return pane
        await trio.sleep(0.05)


async def keys(session: str, *keys: str) -> None:
    for key in keys:
        await tmux("send-keys", "-t", session, key)


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (.ci/run installs it)")
async def test_the_terminal_console_shows_output_live_and_acts(console: Console) -> None:
    """In tmux: the job table updates live, Enter shows a job's output while it runs, x y
    kills a job, a approves a request; each change is recorded as made by the token."""
    session = f"wfe-test-{uuid.uuid4().hex[:8]}"
    (console.root / "run").mkdir(exist_ok=True)
    (console.root / "run" / "api.port").write_text(console.url.rsplit(":", 1)[1].strip("/") + "\n")
    gate = console.root / "gate"
    command = f"{sys.executable} -m wfe console --config {console.root / 'wfe.toml'}"
    env_cwd = os.getcwd()
    with trio.fail_after(GUARD):
        await tmux(
            "new-session", "-d", "-s", session, "-x", "120", "-y", "30", "-c", env_cwd, command
        )
        try:
            async with console.connect() as c:
                await screen_shows(session, "wfe console  bootstrap (admin)", "(no jobs)")
                job = (
                    await c.call(
                        "run", rscript="console_work", params={"lines": 3, "gate": str(gate)}
                    )
                )["job"]
                await screen_shows(session, job, "running")
                await keys(session, "Enter")
                pane = await screen_shows(session, f"output of {job}", "console_work line 1 of 3")
                assert "line 2" not in pane
                assert (await c.call("job", job=job))["state"] == "running"
                gate.write_text("open\n")
                await screen_shows(session, "console_work line 3 of 3", "-- succeeded --")
                await keys(session, "Escape")
                victim = (await c.call("run", rscript="sleep_echo", params={"seconds": 60}))["job"]
                await screen_shows(session, f"{victim}   rscript  sleep_echo")
                await keys(session, "x")
                await screen_shows(session, f"kill {victim} and everything it started? y/n")
                await keys(session, "y")
                assert (await c.call("wait", job=victim))["state"] == "cancelled"
                await console.catalog(c, 1)
                rid = (await console.submit(c, gate=str(gate)))["id"]
                await keys(session, "2")
                await screen_shows(session, rid, "submitted")
                await keys(session, "a")
                await screen_shows(session, "approve: request " + rid)
                assert (await c.call("request", request=rid))["state"] != "submitted"
                await keys(session, "Enter")  # the request's detail, as `wfe status REQUEST`
                await screen_shows(session, f"request {rid}  Esc: back", "STAGE  STATE")
                await keys(session, "Escape")
                await screen_shows(session, "[2 requests]", rid)
                events: list[dict[str, Any]] = await c.call("events", limit=5000)
                kill = [e for e in events if e["kind"] == "job.kill_requested"]
                assert [(e["subject"], e["data"]["by"]) for e in kill] == [(victim, "bootstrap")]
                await keys(session, "q")
                while session in await tmux("list-sessions", "-F", "#{session_name}", check=False):  # noqa: ASYNC110
                    await trio.sleep(0.05)
        finally:
            with trio.CancelScope(shield=True):
                await tmux("kill-session", "-t", session, check=False)
