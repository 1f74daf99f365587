"""``/metrics``, ``/healthz`` and ``/readyz`` of a real engine's console, scraped over TCP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import trio
from prometheus_client.parser import text_string_to_metric_families

from wfe.engine.console.api import serve_api
from wfe.engine.keys import read_token
from wfe.engine.runtime.daemon import open_engine

from .conftest import GUARD, Console, workspace


async def get(console: Console, path: str) -> tuple[int, bytes]:
    """Status and body of a plain GET on the console's port, without a token."""
    port = int(console.url.rsplit(":", 1)[1].strip("/"))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def scrape(console: Console) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by name and labels."""
    status, body = await get(console, "/metrics")
    assert status == 200
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_as_jobs_run(console: Console) -> None:
    """A job run through the console shows in the scrape that follows: one more succeeded
    RScript job and ended attempt, one more dispatch->result observation, more events and
    commits; the connected agent and this scrape's own socket are counted."""
    with trio.fail_after(GUARD):
        before = await scrape(console)
        async with console.connect() as client:
            job = (await client.call("run", rscript="noop"))["job"]
            assert (await client.call("wait", job=job))["state"] == "succeeded"
            after = await scrape(console)
    succeeded = {"kind": "rscript", "state": "succeeded"}
    assert value(after, "wfe_jobs", **succeeded) == value(before, "wfe_jobs", **succeeded) + 1
    ended = "wfe_attempts_ended_total"
    assert value(after, ended, outcome="succeeded") == value(before, ended, outcome="succeeded") + 1
    latency = "wfe_attempt_dispatch_to_result_seconds_count"
    assert value(after, latency) == value(before, latency) + 1
    assert value(after, "wfe_attempt_dispatch_to_result_seconds_sum") > 0
    events = "wfe_events_committed_total"
    assert value(after, events) > value(before, events) > 0
    commits = "wfe_repository_commits_total"
    assert value(after, commits) > value(before, commits)
    assert value(after, "wfe_repository_commit_seconds_count") > 0
    assert value(after, "wfe_agents", state="connected") == 1
    assert value(after, "wfe_console_connections", state="authenticated") == 1
    assert value(after, "wfe_console_connections", state="unauthenticated") >= 1  # the scrape
    assert value(after, "wfe_queue_depth") == 0
    assert value(after, "wfe_repository_write_queue_depth") >= 0


async def test_health_and_readiness_answer_as_documented(console: Console) -> None:
    """/healthz says ok; /readyz says ready, and 503 with the reason while the local agents'
    socket is gone, then ready again; no token is asked for and nothing else is given."""
    with trio.fail_after(GUARD):
        assert await get(console, "/healthz") == (200, b"ok\n")
        assert await get(console, "/readyz") == (200, b"ready\n")
        sock = console.engine.config.run_dir / "agents.sock"
        moved = sock.with_name("agents.sock.moved")
        sock.rename(moved)
        try:
            assert await get(console, "/readyz") == (
                503,
                b"local agents: their socket is not being served\n",
            )
        finally:
            moved.rename(sock)
        assert await get(console, "/readyz") == (200, b"ready\n")
        assert (await get(console, "/metrics/x"))[0] == 404


async def readyz_until(console: Console, status: int) -> bytes:
    """/readyz's body once it answers ``status`` (the writer notices the disk on its own)."""
    while True:
        got, body = await get(console, "/readyz")
        if got == status:
            return body
        await trio.sleep(0.05)


async def test_readyz_fails_while_the_repository_disk_is_full(tmp_path: Path) -> None:
    """With the repository on its own small filesystem filled up, a write is held and
    /readyz answers 503 naming the full disk (not its path); /healthz still says ok; once
    space returns the held write commits and /readyz is ready again."""
    from tests.engine.repository.conftest import SmallFs, mount_small_fs, unmount

    directory = tmp_path / "small"
    mount_small_fs(directory)
    try:
        disk = SmallFs(directory)
        config = workspace(tmp_path / "ws")
        config = attrs.evolve(
            config, engine=attrs.evolve(config.engine, repository=str(directory / "wfe.db"))
        )
        with trio.fail_after(GUARD):
            async with open_engine(config, start_local_agents=False) as engine:
                async with trio.open_nursery() as nursery:
                    port = await nursery.start(lambda task_status: serve_api(
                        engine, host="127.0.0.1", port=0, token=read_token(config),
                        task_status=task_status))  # fmt: skip
                    console = Console(engine, f"ws://127.0.0.1:{port}/", "", config.root)
                    assert await get(console, "/readyz") == (200, b"ready\n")
                    disk.fill()
                    blob = "x" * (1024 * 1024)
                    engine.repo.write_nowait(lambda tx: tx.emit("test.blob", "t", {"b": blob}))
                    body = await readyz_until(console, 503)
                    assert body == (
                        b"repository: not writable: the disk is full; new work is refused\n"
                    )
                    assert await get(console, "/healthz") == (200, b"ok\n")
                    disk.release()
                    assert await readyz_until(console, 200) == b"ready\n"
                    nursery.cancel_scope.cancel()
    finally:
        unmount(directory)
