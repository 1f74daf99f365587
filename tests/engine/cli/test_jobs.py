"""The ``wfe`` command as people expect it, against one real engine (``wfe engine`` with a
local agent): typed ``-p``, listings, status filters and trees, retry, action logs, the id
alone from ``submit``, JSON logs and times, a closed pipe, completion."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from wfe.engine.cli.demo import make_workspace

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]


class Wfe:
    """Runs ``wfe`` against the workspace of a running engine."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wfe", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout


def start_engine(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``wfe engine`` for ``config`` with ``extra`` flags; returns once its console answers."""
    run_dir = config.parent / "run"
    with open(log.with_suffix(".out"), "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "wfe", "engine", "--config", str(config), *extra],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    for _ in range(300):
        if (run_dir / "api.port").exists():
            return process
        assert process.poll() is None, log.with_suffix(".out").read_text()
        subprocess.run(["sleep", "0.1"], check=True)
    raise AssertionError("the engine did not start")


def stop_engine(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def wfe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wfe]:
    root = tmp_path_factory.mktemp("cli")
    config = make_workspace(root / "ws", agents=1).root / "wfe.toml"
    log = root / "engine.jsonl"
    process = start_engine(config, log, "--log-format", "json", "--log-file", str(log))
    try:
        yield Wfe(config, log)
    finally:
        stop_engine(process)


def test_run_converts_p_to_the_declared_type(wfe: Wfe) -> None:
    """``-p message=42`` reaches a str parameter as the text 42 (it used to fail as an int);
    an int parameter still gets a number; a value that does not convert fails in one line
    before anything runs."""
    done = json.loads(
        wfe.ok(
            "run",
            "sleep_echo",
            "--rscript",
            "-p",
            "message=42",
            "-p",
            "lines=2",
            "--wait",
            "--json",
        )
    )
    assert done["state"] == "succeeded"
    assert wfe.ok("logs", done["job"]) == "42\n42\n"
    bad = wfe("run", "sleep_echo", "--rscript", "-p", "lines=two")
    assert (bad.returncode, bad.stderr) == (
        1,
        "wfe: error: parameter 'lines': 'two' is not an integer\n",
    )
    unknown = wfe("run", "sleep_echo", "--rscript", "-p", "colour=red")
    assert unknown.stderr.startswith("wfe: error: sleep_echo: unknown parameter 'colour' (known: ")


def test_actions_and_rscripts_list_names_params_and_docs(wfe: Wfe) -> None:
    """Both listings show each name with its parameters (type, default) and the first line
    of its docs, as a table and as JSON."""
    table = wfe.ok("actions").splitlines()
    assert table[0].split() == ["ACTION", "PARAMS", "DOC"]
    survey = next(line for line in table if line.startswith("demo.survey "))
    assert "files:int seconds:float data_dir:str" in survey
    assert "Make the sample data files the survey inspects" in survey
    listed = {a["name"]: a for a in json.loads(wfe.ok("actions", "--json"))}
    assert {"name": "files", "type": "int", "required": False, "default": None} in listed[
        "demo.survey"
    ]["params"]

    scripts = {s["name"]: s for s in json.loads(wfe.ok("rscripts", "--json"))}
    echo = {p["name"]: p for p in scripts["sleep_echo"]["params"]}
    assert (echo["seconds"]["type"], echo["seconds"]["default"]) == ("float", 0.0)
    assert scripts["sleep_echo"]["doc"].startswith("print a message")
    line = next(x for x in wfe.ok("rscripts").splitlines() if x.startswith("bigoutput "))
    assert "size:int!" in line and 'stream:str="stdout"' in line


def test_status_filters_and_a_roots_tree(wfe: Wfe, tmp_path: Path) -> None:
    """``--state``, ``--name``, ``--limit`` and ``--since`` select root jobs; ``status ROOT``
    shows its tree of children; JSON times are ISO 8601 with a zone; no Python reprs."""
    failed = wfe("run", "fail", "--rscript", "--wait").stdout.split()[0]
    survey = wfe.ok(
        "run",
        "demo.survey",
        "-p",
        "files=2",
        "-p",
        "seconds=0",
        "-p",
        f"data_dir={tmp_path}",
        "--wait",
    ).split()[0]

    def ids(*filters: str) -> list[str]:
        return [j["id"] for j in json.loads(wfe.ok("status", "--json", *filters))["jobs"]]

    assert failed in ids("--state", "failed") and survey not in ids("--state", "failed")
    assert ids("--name", "demo.*")[0] == survey and failed not in ids("--name", "demo.*")
    assert ids("--limit", "1") == [survey]
    assert survey in ids("--since", "1h")
    assert ids("--since", "2999-01-01") == []
    assert set(ids("--state", "failed", "--state", "succeeded", "--limit", "500")) >= {
        failed,
        survey,
    }
    children = json.loads(wfe.ok("status", "--json", "--all", "--name", "checksum"))["jobs"]
    assert len(children) >= 2 and all(c["parent"] for c in children)
    bad = wfe("status", "--since", "soon")
    assert bad.returncode == 1 and bad.stderr.startswith("wfe: error: --since 'soon': expected")

    detail = json.loads(wfe.ok("status", survey, "--json"))
    tree = detail["tree"]
    assert [c["name"] for c in tree["children"]] == ["hostinfo", "demo.inspect", "demo.inspect"]
    assert [g["name"] for g in tree["children"][1]["children"]] == ["checksum", "sleep_echo"]
    assert datetime.fromisoformat(detail["created_at"]).tzinfo is not None
    text = wfe.ok("status", survey)
    assert "`-- " in text and "checksum  succeeded  on local-1  exit 0" in text
    assert "result: files=2 " in text and "{'" not in text


def test_retry_runs_a_failed_job_again_as_an_event(wfe: Wfe, tmp_path: Path) -> None:
    """A failed action tree retried after its cause is fixed succeeds under the same job id:
    only the failed jobs run again (a new attempt), succeeded ones keep their results, and a
    ``job.retried`` event names who asked. A running or child job is refused in one line."""
    missing = tmp_path / "later.dat"
    first = wfe("run", "demo.inspect", "-p", f"path={missing}", "-p", "seconds=0", "--wait")
    assert first.returncode == 1
    job = first.stdout.split()[0]
    [checksum] = json.loads(wfe.ok("status", job, "--json"))["tree"]["children"]
    assert checksum["state"] == "failed"

    missing.write_bytes(b"now here\n")
    assert wfe.ok("retry", job).startswith(job)
    done = json.loads(wfe.ok("run", "noop", "--rscript", "--wait", "--json"))  # engine answers
    assert done["state"] == "succeeded"
    for _ in range(200):
        detail = json.loads(wfe.ok("status", job, "--json"))
        if detail["state"] != "running":
            break
    assert detail["state"] == "succeeded", detail
    checksum, echo = detail["tree"]["children"]
    assert checksum["state"] == "succeeded"
    attempts = json.loads(wfe.ok("status", checksum["id"], "--json"))["attempt_list"]
    assert [a["state"] for a in attempts] == ["failed", "succeeded"]
    assert echo["state"] == "succeeded"

    events = subprocess.run(
        [sys.executable, "-c", _EVENTS, str(wfe.config.parent / "wfe.db"), job],
        capture_output=True,
        text=True,
        check=True,
    )
    retried = [json.loads(line) for line in events.stdout.splitlines()]
    assert [(e["kind"], e["data"]["by"], e["data"]["was"]) for e in retried] == [
        ("job.retried", "bootstrap", "failed")
    ]
    again = wfe("retry", job)
    assert (
        again.stderr
        == f"wfe: error: job {job} is succeeded: only a failed or cancelled job can be retried\n"
    )
    child = wfe("retry", checksum["id"])
    assert child.stderr == (
        f"wfe: error: job {checksum['id']} is a child of {job}: retry the root job {job}\n"
    )


def wait_ended(wfe: Wfe, job: str) -> dict[str, Any]:
    for _ in range(300):
        detail: dict[str, Any] = json.loads(wfe.ok("status", job, "--json"))
        if detail["state"] in ("succeeded", "failed", "cancelled"):
            return detail
        subprocess.run(["sleep", "0.05"], check=True)
    raise AssertionError(f"{job} did not end")


def test_retry_of_a_failed_or_cancelled_rscript(wfe: Wfe) -> None:
    """A failed RScript job retried gets one more attempt under the same id; a cancelled one
    runs again (and can be killed again)."""
    failed = wfe("run", "fail", "--rscript", "-p", "exit_code=2", "--wait").stdout.split()[0]
    assert wfe.ok("retry", failed) == f"{failed}\n"
    detail = wait_ended(wfe, failed)
    assert detail["state"] == "failed"
    assert [a["exit_code"] for a in detail["attempt_list"]] == [2, 2]

    slow = wfe.ok("run", "sleep_echo", "--rscript", "-p", "seconds=60").strip()
    wfe.ok("kill", slow)
    assert wait_ended(wfe, slow)["state"] == "cancelled"
    retried = json.loads(wfe.ok("retry", slow, "--json"))
    assert retried == {"job": slow, "state": "queued", "reset": [slow]}
    for _ in range(300):
        if json.loads(wfe.ok("status", slow, "--json"))["state"] == "running":
            break
        subprocess.run(["sleep", "0.05"], check=True)
    wfe.ok("kill", slow)
    assert wait_ended(wfe, slow)["state"] == "cancelled"


_EVENTS = """
import json, sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
for kind, data in conn.execute(
    "SELECT kind, data FROM events WHERE subject = ? AND kind = 'job.retried'", (sys.argv[2],)
):
    print(json.dumps({"kind": kind, "data": json.loads(data)}))
"""


def test_logs_of_an_action_show_its_ctx_log_lines(wfe: Wfe, tmp_path: Path) -> None:
    """``ctx.log`` lines are stored with the action's job and shown by ``wfe logs JOB``;
    the engine's JSON log carries the same line with the job id."""
    job = wfe.ok(
        "run",
        "demo.survey",
        "-p",
        "files=1",
        "-p",
        "seconds=0",
        "-p",
        f"data_dir={tmp_path}",
        "--wait",
    ).split()[0]
    lines = wfe.ok("logs", job).splitlines()
    assert len(lines) == 1 and lines[0].endswith(f" INFO prepared 1 files in {tmp_path}")

    records = [json.loads(line) for line in wfe.log.read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert all(datetime.fromisoformat(r["time"]).tzinfo is not None for r in records)
    [mine] = [r for r in records if r.get("job") == job]
    assert (mine["level"], mine["logger"], mine["message"]) == (
        "INFO",
        "wfe.actions",
        f"prepared 1 files in {tmp_path}",
    )


def test_submit_prints_the_id_alone(wfe: Wfe) -> None:
    """``R=$(wfe submit ...)`` captures the request id and nothing else."""
    done = wfe("submit", str(REPO / "examples/pipeline/pipeline.toml"), "--user", "cli")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pipeline-cli-0001\n"


def test_a_closed_pipe_ends_quietly(wfe: Wfe) -> None:
    """``wfe status --json | head`` or ``wfe logs JOB | head`` whose reader has gone: no
    traceback, no error line (not "cannot reach the engine" either: the pipe closed inside a
    connection), the exit status of a command stopped by SIGPIPE."""
    big = wfe.ok("run", "bigoutput", "--rscript", "-p", "size=300000", "--wait").split()[0]
    for args in (("status", "--json"), ("logs", big), ("logs", big, "-f")):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before anything is written
        try:
            done = subprocess.run(
                [sys.executable, "-m", "wfe", *args, "--config", str(wfe.config)],
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
        finally:
            os.close(write)
        assert (done.returncode, done.stderr) == (141, ""), args


def test_completion_for_bash_and_zsh(tmp_path: Path) -> None:
    """The generated bash completion completes subcommands and their options; the zsh one
    is a compdef script for wfe."""
    script = subprocess.run(
        [sys.executable, "-m", "wfe", "completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "wfe.bash").write_text(script)
    probe = f"""
source {tmp_path / "wfe.bash"}
complete_words() {{ COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _shtab_wfe; echo "${{COMPREPLY[@]}}"; }}
complete_words wfe sta
complete_words wfe status --st
"""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["status", "--state"]
    zsh = subprocess.run(
        [sys.executable, "-m", "wfe", "completion", "zsh"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert zsh.startswith("#compdef wfe") and "retry" in zsh and "--since" in zsh


def test_demo_prints_plain_tables_without_reprs() -> None:
    """``wfe demo`` piped: progress lines, an aligned table and ``key=value`` results, no
    Python reprs and no escape codes."""
    done = subprocess.run(
        [sys.executable, "-m", "wfe", "demo", "--files", "1", "--agents", "1", "--clean"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split()[:4] == ["JOB", "RSCRIPT", "STATE", "EXIT"] for line in lines)
    assert "result: files=1 bytes=" in done.stdout
    assert "{'" not in done.stdout and "\x1b" not in done.stdout
