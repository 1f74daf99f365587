"""Big incompressible output goes by HTTP upload (XEP-0363) when the server offers it, and in
stanzas when it does not; either way the stored output is every byte the script wrote."""

from __future__ import annotations

import random
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

#: Writes ``size`` bytes of seeded random data to stdout, then a line.
RANDOUT = """\
#!/usr/bin/env python3
# wfe-rscript: 1
# name: randout
# version: 1.0
# interpreter: python3
# description: seeded random bytes on stdout, then a line (upload tests)
# timeout: 120
# param size: int (required) bytes to write
# param seed: int (required) seed of the random bytes
# requires: cpus=1

import json, os, random, sys

with open(os.environ["WFE_PARAMS"], encoding="utf-8") as f:
    params = json.load(f)
sys.stdout.buffer.write(random.Random(params["seed"]).randbytes(params["size"]))
sys.stdout.buffer.write(b"done\\n")
"""

SIZE = 3_000_000


def random_bytes(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def scripts_dir(tmp_path: Path) -> Path:
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "randout.py").write_text(RANDOUT)
    return scripts


def uploaded(server: ProsodyServer) -> int:
    """Bytes of the files on the server's upload service (``mod_http_file_share`` keeps them
    as ``*.bin`` under its data directory)."""
    return sum(path.stat().st_size for path in server.data_path.rglob("*.bin"))


async def run_random(cluster: Cluster, tmp_path: Path, h: Any, seeds: list[int]) -> None:
    """Run one ``randout`` job per seed on one agent; check that every job succeeded with all
    its output, and that none needed its output asked for again."""
    config = cluster.config(engine={"rscripts": [str(scripts_dir(tmp_path))]})
    async with open_engine(config) as engine:
        await cluster.start_agent()
        await h.until(engine, lambda: len(h.connected(engine)) == 1)
        job_ids = [await engine.run_rscript("randout", {"size": SIZE, "seed": s}) for s in seeds]
        await h.run_all(engine, job_ids)
        await h.succeeded_once(engine, job_ids)
        for job_id, seed in zip(job_ids, seeds, strict=True):
            assert await engine.output(job_id) == random_bytes(seed) + b"done\n"
        assert engine.controller.output_fill.filled == 0


async def test_random_output_goes_by_http_upload(cluster: Cluster, tmp_path: Path, h: Any) -> None:
    """With the server's upload service, big random output reaches the engine by HTTP: the
    stored output is whole and in order, and nearly all of its bytes were fetched."""
    before = uploaded(cluster.server)
    with trio.fail_after(60):
        await run_random(cluster, tmp_path, h, [1, 2])
    assert uploaded(cluster.server) - before >= 2 * SIZE * 0.9


async def test_without_an_upload_service_output_goes_in_stanzas(
    prosody_factory: Callable[..., ProsodyServer],
    cluster_factory: Callable[[ProsodyServer], Cluster],
    tmp_path: Path,
    h: Any,
) -> None:
    """A server with no upload component: agents and engine find none and the same output
    travels in stanzas, whole."""
    server = prosody_factory(upload=False)
    with trio.fail_after(60):
        await run_random(cluster_factory(server), tmp_path, h, [3])
    assert uploaded(server) == 0


async def test_random_output_goes_by_https_upload_verified_with_the_xmpp_ca(
    prosody_tls: ProsodyServer,
    cluster_factory: Callable[[ProsodyServer], Cluster],
    tmp_path: Path,
    h: Any,
) -> None:
    """Against a server that requires STARTTLS, uploads go over HTTPS, verified against the
    same CA file as the XMPP connection, and the output arrives whole."""
    assert prosody_tls.http_url is not None and prosody_tls.http_url.startswith("https://")
    before = uploaded(prosody_tls)
    with trio.fail_after(60):
        await run_random(cluster_factory(prosody_tls), tmp_path, h, [4])
    assert uploaded(prosody_tls) - before >= SIZE * 0.9


async def test_output_the_engine_cannot_fetch_comes_again_inline(
    cluster: Cluster, tmp_path: Path, h: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the engine cannot fetch uploaded output (here: every fetch fails), the result
    shows the holes, the engine asks the agent again, and the agent replays those chunks in
    stanzas, not by upload: the job's output ends up whole."""
    from wfe.engine.transports.xmpp_link import UploadError, UploadFetcher, UploadRef

    async def fail(self: UploadFetcher, ref: UploadRef) -> list[Any]:
        raise UploadError(f"upload {ref.url}: the test refuses every fetch")

    monkeypatch.setattr(UploadFetcher, "fetch", fail)
    config = cluster.config(engine={"rscripts": [str(scripts_dir(tmp_path))]})
    before = uploaded(cluster.server)
    with trio.fail_after(60):
        async with open_engine(config) as engine:
            await cluster.start_agent()
            await h.until(engine, lambda: len(h.connected(engine)) == 1)
            job_id = await engine.run_rscript("randout", {"size": SIZE, "seed": 5})
            await h.run_all(engine, [job_id])
            await h.succeeded_once(engine, [job_id])
            assert await engine.output(job_id) == random_bytes(5) + b"done\n"
            assert engine.controller.output_fill.filled == 1
    assert SIZE * 0.9 <= uploaded(cluster.server) - before <= SIZE * 1.1  # uploaded once
