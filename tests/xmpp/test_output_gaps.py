"""Output sent while the XMPP server was down reaches the repository whole, even when the
attempt finished during the outage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from wfe.engine.devtools.prosody import ProsodyServer
from wfe.engine.runtime.daemon import open_engine

if TYPE_CHECKING:
    from conftest import Cluster

pytestmark = pytest.mark.xmpp

#: Prints one line, waits for the file ``go`` to exist, then prints ``lines`` more, one
#: flushed write each (so they leave as many chunks as the agent reads).
GAPOUT = """\
#!/usr/bin/env python3
# wfe-rscript: 1
# name: gapout
# version: 1.0
# interpreter: python3
# description: print a line, wait for a file, print many lines (XMPP output-gap tests)
# timeout: 120
# param go: str (required) the file to wait for
# param lines: int (required) how many lines to print after it appears
# requires: cpus=1

import json, os, sys, time

with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
    params = json.load(f)
print("before", flush=True)
while not os.path.exists(params["go"]):
    time.sleep(0.01)
for n in range(params["lines"]):
    sys.stdout.write(f"after {n:05d} " + "x" * 200 + "\\n")
    sys.stdout.flush()
"""


def expected(lines: int) -> bytes:
    return b"before\n" + b"".join(
        f"after {n:05d} ".encode() + b"x" * 200 + b"\n" for n in range(lines)
    )


async def wait_for_line(read: Callable[[], str], line: str) -> None:
    """Wait until ``read()`` (another process's log) shows ``line`` (real time; the caller
    bounds it): with the XMPP server down nothing tells us, so poll."""
    while line not in read():  # noqa: ASYNC110
        await trio.sleep(0.02)


async def test_output_of_an_attempt_that_finished_while_prosody_was_down_is_whole(
    prosody_factory: Callable[..., ProsodyServer],
    cluster_factory: Callable[[ProsodyServer], Cluster],
    h: Any,
    tmp_path: Path,
) -> None:
    """Prosody stops while a job runs; the job prints its output and finishes during the
    outage; when Prosody is back, the engine sees holes behind the result, asks the agent
    for the missing chunks, and commits the job with every byte of its output."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "gapout.py").write_text(GAPOUT)
    server = prosody_factory()
    cluster = cluster_factory(server)
    config = cluster.config(
        agents={"heartbeat_deadline": 60.0, "reconcile_grace": 60.0},
        engine={"rscripts": [str(scripts)]},
    )
    go = tmp_path / "go"
    lines = 2000
    with trio.fail_after(90):
        async with open_engine(config) as engine:
            agent = await cluster.start_agent()
            await h.until(engine, lambda: len(h.connected(engine)) == 1)
            job_id = await engine.run_rscript("gapout", {"go": str(go), "lines": lines})
            send, receive = trio.open_memory_channel[Any](100)
            stop = engine.controller.watch_output(job_id, send)  # before any output can come
            seen = b""
            while b"before\n" not in seen:  # it came over XMPP
                seen += (await receive.receive()).data
            stop()
            await trio.to_thread.run_sync(server.stop)
            go.touch()
            # The attempt ended during the outage: the agent logs this line once its result is
            # spooled and sent (wfe.agents.core), so when Prosody is back the agent's hello lists
            # the attempt as held, not running. (When the line came before the spool's fsync,
            # a slow disk let the agent say hello first with the attempt still running: the
            # engine's reconnect Resume then filled the output before the result came.)
            await wait_for_line(lambda: cluster.log(agent), f"attempt {job_id}#1 ended: exited")
            await trio.to_thread.run_sync(server.start)
            await h.run_all(engine, [job_id])
            (job,) = await h.succeeded_once(engine, [job_id])
            assert await engine.output(job_id) == expected(lines)
            assert engine.controller.output_fill.filled == 1, "no holes behind the result"
            assert engine.controller.output_fill.incomplete == 0
            assert job["attempts"] == 1
