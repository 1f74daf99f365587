"""Keeping the books with a real engine: ``wfe backup`` while a workload runs, ``wfe purge``,
a console port in use refused before anything starts, and ``wfe agent``'s JSON log."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.engine.cli.test_jobs import Wfe, start_engine, stop_engine
from wfe.engine.cli.demo import make_workspace

pytestmark = pytest.mark.slow


@pytest.fixture
def wfe(tmp_path: Path) -> Iterator[Wfe]:
    config = make_workspace(tmp_path / "ws", agents=1, slots=2).root / "wfe.toml"
    log = tmp_path / "engine.log"
    process = start_engine(config, log, "--log-file", str(log))
    try:
        yield Wfe(config, log)
    finally:
        stop_engine(process)


def _read(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_a_backup_taken_during_a_workload_is_whole(wfe: Wfe, tmp_path: Path) -> None:
    """A backup taken while jobs run opens, passes ``PRAGMA integrity_check``, holds every
    event committed before it began (the same rows), and shows the workload unfinished;
    a second backup onto the same file is refused without --force."""
    db = wfe.config.parent / "wfe.db"
    root = wfe.ok(
        "run",
        "demo.survey",
        "-p",
        "files=12",
        "-p",
        "seconds=0.3",
        "-p",
        f"data_dir={tmp_path / 'd'}",
    ).strip()
    for _ in range(300):  # until the workload is under way: some RScripts have ended
        ended = _read(
            db, "SELECT COUNT(*) FROM jobs WHERE kind = 'rscript' AND ended_at IS NOT NULL"
        )
        if ended[0][0] >= 3:
            break
        subprocess.run(["sleep", "0.05"], check=True)
    [(last_before,)] = _read(db, "SELECT MAX(id) FROM events")

    dest = tmp_path / "backup" / "wfe-copy.db"
    dest.parent.mkdir()
    made = json.loads(wfe.ok("backup", str(dest), "--full-check", "--json"))
    assert (made["path"], made["check"]) == (str(dest), "ok")
    assert made["last_event"] >= last_before

    copy = sqlite3.connect(dest)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        held = copy.execute(
            "SELECT id, at, kind, subject, data FROM events WHERE id <= ? ORDER BY id",
            (last_before,),
        ).fetchall()
        [(state,)] = copy.execute("SELECT state FROM jobs WHERE id = ?", (root,)).fetchall()
    finally:
        copy.close()
    source = _read(
        db, "SELECT id, at, kind, subject, data FROM events WHERE id <= ? ORDER BY id", last_before
    )
    assert held == source and len(held) == last_before
    assert state == "running"  # taken while the workload ran
    assert sorted(p.name for p in dest.parent.iterdir()) == ["wfe-copy.db"]  # no -wal, no partial

    again = wfe("backup", str(dest))
    assert (again.returncode, again.stderr) == (
        1,
        f"wfe: error: {dest} exists (use --force to replace it)\n",
    )


def test_purge_deletes_old_output_and_events_and_keeps_running_work(wfe: Wfe) -> None:
    """``wfe purge --before``: a date in the future is refused; ``--dry-run`` counts and
    changes nothing; the purge deletes finished jobs' output and events (their status stays),
    keeps a running job's, and is itself an event."""
    db = wfe.config.parent / "wfe.db"
    done = wfe.ok("run", "sleep_echo", "--rscript", "-p", "message=old", "--wait").split()[0]
    running = wfe.ok("run", "sleep_echo", "--rscript", "-p", "message=live", "-p", "seconds=60")
    running = running.strip()
    for _ in range(300):
        if _read(db, "SELECT COUNT(*) FROM output WHERE job_id = ?", running)[0][0]:
            break
        subprocess.run(["sleep", "0.05"], check=True)

    future = wfe("purge", "--before", "2999-01-01")
    assert future.returncode == 1 and "is in the future" in future.stderr
    dry = json.loads(wfe.ok("purge", "--before", "0s", "--dry-run", "--json"))
    assert (dry["roots"], dry["output_bytes"]) == (1, len("old\n"))
    assert wfe.ok("logs", done) == "old\n"

    purged = wfe.ok("purge", "--before", "0s")
    assert purged.startswith("deleted: 1 job(s) in 1 tree(s): ")
    assert wfe.ok("logs", done) == ""
    assert json.loads(wfe.ok("status", done, "--json"))["state"] == "succeeded"
    assert _read(db, "SELECT COUNT(*) FROM events WHERE subject = ?", done) == [(0,)]
    assert _read(db, "SELECT COUNT(*) FROM output WHERE job_id = ?", running)[0][0] > 0
    [(data,)] = _read(db, "SELECT data FROM events WHERE kind = 'repository.purged'")
    assert json.loads(str(data))["by"] == "bootstrap"
    wfe.ok("kill", running)


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """A second engine on a port already listened on exits at once with one line naming the
    address and ``[api] port``, having started no agent and written no repository."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        init = subprocess.run(
            [sys.executable, "-m", "wfe", "init", str(tmp_path / "ws"), "--port", str(port)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert init.returncode == 0
        config = tmp_path / "ws" / "wfe.toml"
        done = subprocess.run(
            [sys.executable, "-m", "wfe", "engine", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"wfe: error: cannot listen on 127.0.0.1:{port}: ")
    assert "[api] port" in done.stderr
    assert not (tmp_path / "ws" / "wfe.db").exists()
    assert not (tmp_path / "ws" / "agents").exists()


def test_agent_logs_json_lines_to_a_file(tmp_path: Path) -> None:
    """``wfe agent --log-format json --log-file F``: one JSON object per line with time (ISO
    8601 with a zone), level, logger, message and the agent's name; nothing on stderr."""
    log = tmp_path / "agent.jsonl"
    done = subprocess.run(
        [
            sys.executable, "-m", "wfe", "agent", "--name", "a1",
            "--socket", str(tmp_path / "none.sock"), "--spool", str(tmp_path / "spool"),
            "--workdir", str(tmp_path / "work"), "--give-up-after", "0.5",
            "--log-format", "json", "--log-file", str(log),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (1, "")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all(r["agent"] == "a1" and r["logger"] == "wfe.agent" for r in records)
    assert all(datetime.fromisoformat(r["time"]).tzinfo is not None for r in records)
    assert records[-1]["message"] == "agent stopped: gave_up"
    assert {r["level"] for r in records} <= {"INFO", "WARNING"}


def test_a_restored_backup_starts_with_the_books_as_they_were(tmp_path: Path) -> None:
    """Restoring as docs/deploy.md says (stop, replace wfe.db, remove its -wal and -shm,
    start): the engine starts on the books of the backup: a job from before it is there
    with its output, one from after it is not, and new work runs."""
    config = make_workspace(tmp_path / "ws", agents=1).root / "wfe.toml"
    log = tmp_path / "engine.log"
    wfe = Wfe(config, log)
    process = start_engine(config, log)
    try:
        before = wfe.ok("run", "sleep_echo", "--rscript", "-p", "message=kept", "--wait").split()[0]
        wfe.ok("backup", str(tmp_path / "copy.db"))
        after = wfe.ok("run", "sleep_echo", "--rscript", "-p", "message=gone", "--wait").split()[0]
    finally:
        stop_engine(process)
    db = config.parent / "wfe.db"
    db.rename(tmp_path / "wfe.db.before-restore")
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    (tmp_path / "copy.db").rename(db)
    (config.parent / "run" / "api.port").unlink()
    process = start_engine(config, log)
    try:
        assert wfe.ok("logs", before) == "kept\n"
        missing = wfe("status", after)
        assert missing.stderr == f"wfe: error: no job {after}\n"
        again = wfe.ok("run", "noop", "--rscript", "--wait").split()
        assert again == [after, "succeeded"]  # the id is given out again
    finally:
        stop_engine(process)


def test_a_log_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    """``wfe engine --log-file`` in a missing directory fails at once, naming the file, and
    starts nothing."""
    config = make_workspace(tmp_path / "ws", agents=1).root / "wfe.toml"
    bad = tmp_path / "missing" / "engine.log"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wfe",
            "engine",
            "--config",
            str(config),
            "--log-file",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (
        1,
        f"wfe: error: --log-file {bad}: No such file or directory\n",
    )
    assert not (config.parent / "wfe.db").exists()
