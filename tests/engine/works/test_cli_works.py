"""``wfe work`` against a real engine process: the pull worker and the commands around it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import start_engine, stop_engine, wfe

pytestmark = pytest.mark.slow

MODULE = textwrap.dedent(
    """
    import os, time
    from pathlib import Path

    def add(a, b):
        return a + b

    def boom(n):
        raise ValueError(f"bad n: {n}")

    def hang(seconds):
        time.sleep(seconds)

    def files(name):
        Path(name).write_text("x")
        return {"name": name}, [os.path.abspath(name)], []

    def slow(gate, seconds):
        Path(gate).write_text("running")
        time.sleep(seconds)
        return {"slept": seconds}

    def once(log):
        # each call appends its pid; the first one then hangs until killed
        with open(log, "a") as f:
            f.write(f"start {os.getpid()}\\n")
        if Path(log).read_text().count("start") == 1:
            time.sleep(3600)
        with open(log, "a") as f:
            f.write("done\\n")
        return {"ok": True}
    """
)


@pytest.fixture
def here(tmp_path: Path) -> Path:
    (tmp_path / "mymodule.py").write_text(MODULE)
    return tmp_path


def work_cmd(config: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return wfe(config, "work", *args, cwd=cwd)


def show(config: Path, cwd: Path, work_id: str) -> dict[str, Any]:
    done = work_cmd(config, cwd, "show", work_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def worker(config: Path, cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "wfe", "work", "run", *args, "--config", str(config)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def until(check: Callable[[], bool], seconds: float = 60) -> None:
    """Poll a condition another process makes true (no event reaches this test process)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        subprocess.run(["sleep", "0.1"], check=True)


def test_the_seed_example_run_by_a_worker(engine_process: Path, here: Path) -> None:
    """`wfe work deposit` then the doc's `wfe work run sample-pipeline mymodule.add` performs
    the work; SIGTERM stops the worker cleanly (exit 0); `ls`, `count`, `show` see it."""
    deposited = work_cmd(
        engine_process, here, "deposit", "sample-pipeline", "-p", "a=1", "-p", "b=2"
    )
    assert deposited.returncode == 0, deposited.stderr
    (wid,) = deposited.stdout.split()
    process = worker(engine_process, here, "sample-pipeline", "mymodule.add", "--sleep", "0.2")
    try:
        until(lambda: show(engine_process, here, wid)["status"] == "success")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.startswith(f"{wid} attempt 1: success in ")
    stored = show(engine_process, here, wid)
    assert (stored["results"], stored["attempt"]) == (3, 1)
    listed = json.loads(
        work_cmd(engine_process, here, "ls", "--status", "success", "--json").stdout
    )
    assert [w["id"] for w in listed["works"]] == [wid] and listed["count"] == 1
    assert work_cmd(engine_process, here, "count", "sample-pipeline").stdout.strip() == "1"


def test_sigterm_lets_the_current_work_finish(engine_process: Path, here: Path) -> None:
    """SIGTERM while a work runs: the work finishes and is recorded a success, the worker
    withdraws nothing more and exits 0."""
    gate = here / "gate"
    ids = work_cmd(
        engine_process, here, "deposit", "p", "-p", f"gate={gate}", "-p", "seconds=2",
        "--count", "2",
    ).stdout.split()  # fmt: skip
    process = worker(engine_process, here, "p", "mymodule.slow")
    until(gate.exists)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "stopping after the current work" in err
    assert out.startswith(f"{ids[0]} attempt 1: success")
    assert show(engine_process, here, ids[0])["results"] == {"slept": 2}
    assert show(engine_process, here, ids[1])["status"] == "queued"


def test_a_worker_outlives_an_engine_restart(tmp_path: Path, here: Path) -> None:
    """The engine stops and starts again (on another port) while a worker waits for work:
    the worker reconnects by itself and performs what is deposited afterwards."""
    from wfe.engine.cli.demo import make_workspace

    config = make_workspace(tmp_path / "ws", agents=0).root / "wfe.toml"
    log = tmp_path / "engine.log"
    engine = start_engine(config, log)
    process = worker(config, here, "p", "mymodule.add", "--lives", "2", "--sleep", "0.1")
    try:
        (first,) = work_cmd(config, here, "deposit", "p", "-p", "a=1", "-p", "b=1").stdout.split()
        until(lambda: show(config, here, first)["status"] == "success")
        stop_engine(engine)
        engine = start_engine(config, log)
        (second,) = work_cmd(config, here, "deposit", "p", "-p", "a=2", "-p", "b=2").stdout.split()
        out, err = process.communicate(timeout=90)
        assert process.returncode == 0, err
        assert "trying again in" in err
        assert out.splitlines()[1].startswith(f"{second} attempt 1: success")
        assert show(config, here, second)["results"] == 4
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stop_engine(engine)


def test_failures_timeouts_products_and_lives(engine_process: Path, here: Path) -> None:
    """An exception fails each attempt with its traceback until the retries are spent; a
    function over its timeout is killed and fails; a (results, products, plots) return fills
    all three; --lives 4 performs four works and exits."""
    ids = []
    for args in (
        ["-p", "n=7", "--retries", "1", "--function", "mymodule.boom", "--priority", "5"],
        ["-p", "seconds=600", "--timeout", "2", "--retries", "0", "--function", "mymodule.hang"],
        ["-p", "name=out.txt", "--function", "mymodule.files", "--priority", "1"],
    ):
        done = work_cmd(engine_process, here, "deposit", "p", *args)
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.strip())
    run = subprocess.run(
        [sys.executable, "-m", "wfe", "work", "run", "p", "--lives", "4", "--sleep", "0.1",
         "--json", "--config", str(engine_process)],
        cwd=here, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(x["id"], x["attempt"], x["status"]) for x in lines] == [
        (ids[0], 1, "queued"),
        (ids[0], 2, "failure"),
        (ids[1], 1, "failure"),
        (ids[2], 1, "success"),
    ]
    boom = show(engine_process, here, ids[0])
    assert boom["results"]["error"] == "ValueError: bad n: 7"
    assert 'raise ValueError(f"bad n: {n}")' in boom["results"]["traceback"]
    hung = show(engine_process, here, ids[1])
    assert hung["results"]["error"] == "timeout: still running after 2 s, killed"
    made = show(engine_process, here, ids[2])
    assert made["results"] == {"name": "out.txt"}
    assert made["products"] == [str(here / "out.txt")] and made["plots"] == []
    shown = work_cmd(engine_process, here, "show", ids[2]).stdout
    archived = engine_process.parent / "archive" / "p" / ids[2] / "out.txt"
    assert f"product  {here / 'out.txt'} -> {archived}" in shown
    assert archived.read_text() == "x"


def test_bad_input_is_one_line_and_changes_nothing(engine_process: Path, here: Path) -> None:
    """A bad work, a function that is not module.function and a module that is not there
    each fail in one line, before anything is stored or withdrawn."""
    for args, message in (
        (["deposit", "p", "--priority", "9"], "wfe: error: priority: must be 1..5, got 9"),
        (["deposit", "p", "--timeout", "0"], "wfe: error: timeout: must be 1..604800 s, got 0"),
        (
            ["deposit", "p", "--function", "m.f", "--command", "true"],
            "wfe: error: function, command",
        ),
        (["run", "p", "add"], "wfe: error: 'add' is not module.function"),
        (["run", "p", "nosuchmodule.add"], "wfe: error: no module named 'nosuchmodule'"),
    ):
        done = work_cmd(engine_process, here, *args)
        assert done.returncode == 1, (args, done.stdout)
        assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    (here / "works.json").write_text(
        json.dumps([{"pipeline": "p"}, {"pipeline": "p", "retries": -1}])
    )
    done = work_cmd(engine_process, here, "deposit", "--file", "works.json")
    assert done.stderr == "wfe: error: works[1].retries: must be 0..100, got -1\n"
    assert work_cmd(engine_process, here, "count").stdout.strip() == "0"
    (here / "works.json").write_text(
        json.dumps([{"pipeline": "p"}, {"pipeline": "q", "tags": ["x"]}])
    )
    done = work_cmd(engine_process, here, "deposit", "--file", "works.json", "--json")
    assert len(json.loads(done.stdout)) == 2
    assert work_cmd(engine_process, here, "count", "q", "--tags", "x").stdout.strip() == "1"


def test_by_hand_withdraw_and_update(engine_process: Path, here: Path) -> None:
    """`withdraw` takes the best work (exit 3 when there is none); `update` records it;
    `cancel` and `delete` are an operator's (the bootstrap admin here)."""
    (first,) = work_cmd(engine_process, here, "deposit", "p").stdout.split()
    second = work_cmd(engine_process, here, "deposit", "p", "--count", "2").stdout.split()
    taken = json.loads(work_cmd(engine_process, here, "withdraw", "p", "--json").stdout)
    assert taken["id"] == first and taken["status"] == "running"
    done = work_cmd(
        engine_process, here, "update", first, "--attempt", "1", "--status", "success",
        "--results", '{"x": 1}', "--json",
    )  # fmt: skip
    assert json.loads(done.stdout)["results"] == {"x": 1}
    assert (
        work_cmd(engine_process, here, "cancel", second[0]).stdout.strip()
        == f"{second[0]}: cancelled"
    )
    assert work_cmd(engine_process, here, "delete", *second).returncode == 0
    work_cmd(engine_process, here, "withdraw", "p")  # nothing queued now
    assert work_cmd(engine_process, here, "withdraw", "p").returncode == 3


def test_a_worker_killed_mid_work_loses_it_to_the_next(engine_process: Path, here: Path) -> None:
    """SIGKILL a worker while its function runs: the function dies with it, the work comes
    back when its lease (3 s) runs out, another worker runs it as attempt 2, and exactly one
    success is recorded; the function ran twice and finished once."""
    log = here / "calls.log"
    deposited = work_cmd(
        engine_process, here, "deposit", "p", "-p", f"log={log}", "--timeout", "3",
        "--function", "mymodule.once",
    )  # fmt: skip
    (wid,) = deposited.stdout.split()
    first = worker(engine_process, here, "p", "--lives", "1")
    until(lambda: log.exists() and "start" in log.read_text())
    first_pid = int(log.read_text().split()[1])
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    until(lambda: not _alive(first_pid), 10)  # the function died with its worker
    second = worker(engine_process, here, "p", "--lives", "1", "--sleep", "0.2")
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert out.startswith(f"{wid} attempt 2: success")
    stored = show(engine_process, here, wid)
    assert (stored["status"], stored["attempt"], stored["results"]) == ("success", 2, {"ok": True})
    assert log.read_text().count("start") == 2 and log.read_text().count("done") == 1
    events = json.loads(
        subprocess.run(
            [sys.executable, "-c", _EVENTS.format(wid=wid)],
            env={**os.environ, "WFE_CONFIG": str(engine_process)},
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    assert [e["kind"] for e in events] == [
        "work.deposited",
        "work.withdrawn",
        "work.requeued",
        "work.withdrawn",
        "work.updated",
    ]
    assert [e["data"].get("status") for e in events].count("success") == 1


_EVENTS = """
import json, trio
from wfe.engine.cli.client import connect_config
from wfe.engine.config import load_config
import os
from pathlib import Path

async def main():
    async with connect_config(load_config(Path(os.environ["WFE_CONFIG"]))) as c:
        print(json.dumps(await c.call("events", kind="work.", subject="{wid}")))

trio.run(main)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")
