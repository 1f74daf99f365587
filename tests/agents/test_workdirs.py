"""Attempt directories reused from one attempt to the next (wfe.agents.workdirs)."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import trio

from wfe.agents.keeper_link import KeeperLink
from wfe.agents.runner import Attempt
from wfe.agents.workdirs import Workdirs
from wfe.protocols.messages import OutputChunk, Stream

GUARD = 10.0


class Recorder:
    """Collects the chunks of an attempt."""

    def __init__(self) -> None:
        self.chunks: list[OutputChunk] = []

    async def __call__(self, chunk: OutputChunk) -> None:
        self.chunks.append(chunk)

    def text(self, stream: Stream) -> str:
        return b"".join(c.data for c in self.chunks if c.stream is stream).decode()


async def test_a_directory_is_reused_clean(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path
) -> None:
    """A finished attempt's directory serves the next one: same inode, fresh script and
    params, nothing the previous script left behind, and no spare left after close()."""
    workdirs = Workdirs(tmp_path, keep=1)
    first = Attempt(
        h.make_dispatch('echo junk > junk\necho \'{"a": 1}\' > "$WFE_RESULT"\n', params={"n": 1}),
        keeper=keeper,
        workdir=tmp_path,
        workdirs=workdirs,
    )
    with trio.fail_after(GUARD):
        assert (await first.run(Recorder())).result == {"a": 1}
    [spare] = os.listdir(tmp_path)
    inode = os.stat(tmp_path / spare).st_ino
    script = "ls\nstat -c %i .\ncat params.json\n"
    second = Attempt(
        h.make_dispatch(script, job_id="job-2", params={"n": 2}),
        keeper=keeper,
        workdir=tmp_path,
        workdirs=workdirs,
    )
    recorder = Recorder()
    with trio.fail_after(GUARD):
        finished = await second.run(recorder)
    assert finished.exit_code == 0 and finished.result is None
    assert recorder.text(Stream.STDOUT) == f'params.json\nscript\n{inode}\n{{"n": 2}}'
    [spare] = os.listdir(tmp_path)
    assert os.stat(tmp_path / spare).st_ino == inode
    workdirs.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("planted", ["symlink", "hardlink", "directory"])
async def test_a_reused_directory_never_writes_through_what_a_script_planted(
    keeper: KeeperLink, h: types.SimpleNamespace, tmp_path: Path, planted: str
) -> None:
    """A script that replaces params.json with a link to another file, or with a directory,
    does not get that file overwritten by the next attempt; the next attempt runs normally."""
    outside = tmp_path / "outside"
    outside.write_text("precious")
    work = tmp_path / "work"
    workdirs = Workdirs(work, keep=1)
    plant = {
        "symlink": f"rm params.json && ln -s {outside} params.json\n",
        "hardlink": f"rm params.json && ln {outside} params.json\n",
        "directory": "rm params.json && mkdir params.json && touch params.json/x\n",
    }[planted]
    with trio.fail_after(GUARD):
        await Attempt(h.make_dispatch(plant), keeper=keeper, workdir=work, workdirs=workdirs).run(
            Recorder()
        )
        recorder = Recorder()
        finished = await Attempt(
            h.make_dispatch("cat params.json\n", job_id="job-2", params={"n": 2}),
            keeper=keeper,
            workdir=work,
            workdirs=workdirs,
        ).run(recorder)
    assert finished.exit_code == 0
    assert recorder.text(Stream.STDOUT) == '{"n": 2}'
    assert outside.read_text() == "precious"


def test_a_spare_replaces_a_directory_left_behind(tmp_path: Path) -> None:
    """make() with a spare at hand removes a stale directory of the same name, empty or not,
    and reuses the spare."""
    workdirs = Workdirs(tmp_path, keep=2)
    for stale_files in (0, 2):
        spare, _ = workdirs.make("first")
        assert workdirs.release(spare)
        stale = tmp_path / "job-1-1"
        stale.mkdir()
        for n in range(stale_files):
            (stale / f"f{n}").write_text("old")
        target, reused = workdirs.make("job-1-1")
        assert reused and os.listdir(target) == []
        assert workdirs.release(target)
    workdirs.close()
    assert os.listdir(tmp_path) == []


def test_release_leaves_a_big_or_nested_directory_to_the_caller(tmp_path: Path) -> None:
    """release() declines a directory with a subdirectory or many entries (the caller removes
    it in a thread) and handles a small one or one that is gone."""
    workdirs = Workdirs(tmp_path, keep=1)
    nested, _ = workdirs.make("nested")
    os.mkdir(f"{nested}/sub")
    assert not workdirs.release(nested) and os.path.isdir(nested)
    big, _ = workdirs.make("big")
    for n in range(40):
        Path(big, f"f{n}").write_text("x")
    assert not workdirs.release(big) and os.path.isdir(big)
    small, _ = workdirs.make("small")
    Path(small, "script").write_text("echo\n")
    Path(small, "junk").write_text("x")
    assert workdirs.release(small) and not os.path.exists(small)
    [spare] = [name for name in os.listdir(tmp_path) if name.startswith(".free-")]
    assert os.listdir(tmp_path / spare) == ["script"]
    assert workdirs.release(str(tmp_path / "gone"))
