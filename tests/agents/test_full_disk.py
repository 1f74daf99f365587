"""An agent whose disk is full refuses work (a loss, run elsewhere) instead of failing it, and
takes work again once space returns. A real 32 MB tmpfs, filled for real."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from wfe.protocols.messages import FinishReason, JobRefused

from ..engine.repository.conftest import SmallFs, mount_small_fs, unmount


@pytest.fixture
def small(tmp_path: Path) -> Iterator[SmallFs]:
    directory = tmp_path / "small"
    mount_small_fs(directory, megabytes=32)  # room above the agent's 16 MiB floor when freed
    try:
        yield SmallFs(directory)
    finally:
        unmount(directory)


async def test_a_full_disk_refuses_the_dispatch_and_space_brings_work_back(
    agents, engine, h: types.SimpleNamespace, small: SmallFs
) -> None:
    """The work directory on a full filesystem: the dispatch is refused (the engine counts
    that as a loss and runs it elsewhere), never run to fail writing its output or reported
    as a failed job (it was, before: "could not start"); once the space is back the next
    dispatch runs and succeeds."""
    agent = agents.build(workdir=small.path / "work")
    agents.start(agent)
    link = await engine.accept()
    await h.receive(link)
    small.fill()
    await link.send(h.make_dispatch("echo hi\n", job_id="full"))
    refused = await h.receive(link)
    assert isinstance(refused, JobRefused), refused
    assert "the agent's disk is full" in refused.reason
    small.release()
    await link.send(h.make_dispatch("echo hi\n", job_id="after"))
    messages, finished = await h.receive_until_finished(link)
    assert finished.reason is FinishReason.EXITED and finished.exit_code == 0
    assert h.output_of(messages) == b"hi\n"
