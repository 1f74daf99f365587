"""Durability: a writer killed with SIGKILL loses nothing whose write() had returned."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio

from wfe.engine.repository import open_repository

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import sys
import trio
from wfe.engine.repository import open_repository

async def main(path):
    async with open_repository(path) as repo:
        async def writer(w):
            for k in range(10**9):
                job = f"job-{w}-{k}"
                def op(tx, job=job):
                    tx.execute(
                        "INSERT INTO jobs (id, kind, name, root_id, state, created_at)"
                        " VALUES (?, 'action', 'durability', ?, 'queued', ?)", (job, job, tx.at))
                    tx.emit("job.created", job, {"n": k})
                    tx.execute("INSERT INTO output (job_id, attempt, seq, stream, data)"
                               " VALUES (?, 1, 0, 'stdout', zeroblob(2000))", (job,))
                await repo.write(op)
                print(job, flush=True)  # only after the commit
        async with trio.open_nursery() as nursery:
            for w in range(20):
                nursery.start_soon(writer, w)

trio.run(main, sys.argv[1])
"""


async def test_sigkilled_writer_keeps_every_committed_write(tmp_path: Path) -> None:
    """Every id the child printed after `await write()` is in the reopened, intact file."""
    path = tmp_path / "wfe.db"
    committed: list[str] = []
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, cwd=ROOT
        )
        assert process.stdout is not None
        pending = b""
        killed = False
        while chunk := await process.stdout.receive_some(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            committed.extend(line.decode() for line in lines)
            if not killed and len(committed) >= 2000:
                process.kill()  # SIGKILL, mid-stream: 20 writers are in flight
                killed = True
        assert await process.wait() == -signal.SIGKILL
    assert len(committed) >= 2000

    with trio.fail_after(10):
        async with open_repository(path) as repo:
            check = await repo.read(lambda c: c.execute("PRAGMA integrity_check").fetchone()[0])
            jobs = set(await repo.read(lambda c: [r[0] for r in c.execute("SELECT id FROM jobs")]))
            subjects = {e.subject for e in await repo.events_since(0, limit=10**6)}
    assert check == "ok"
    missing = [job for job in committed if job not in jobs or job not in subjects]
    assert missing == []
