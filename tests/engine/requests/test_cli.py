"""The request commands of ``wfe``: what they send to the engine and what they print.

The engine side of every op is tested through a real engine in the other files; here a
fake stands in for the API call so that the commands' own work (arguments, payload,
output, exit codes) is checked without starting one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli import main as cli
from wfe.engine.cli import requests as cli_requests

from .conftest import HEAD, SCRIPTS

DETAIL = {
    "id": "t-alice-0001", "workflow": "t", "user": "alice", "namespace": "tests", "state": "completed",
    "priority": 0, "definition": "ab" * 32, "params": {"gate": ""}, "error": None,
    "failures": ["stage 'c' skipped: upstream stage 'b' failed"],
    "stages": [{"name": "a", "state": "done", "error": None, "inputs": {"processed": 2}}],
    "jobs": [{"job": "j000001", "stage": "a", "batch": "b000001", "inputs": 2, "state": "succeeded",
              "batch_state": "settled", "outcome": "processed", "stop": None, "error": None}],
    "products": 2, "history": [],
}  # fmt: skip


class FakeEngine:
    """Answers ops with canned results and records what was asked."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, args: Any, op: str, **call_args: Any) -> Any:
        self.calls.append((op, call_args))
        return self.answers[op]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    engine = FakeEngine({})
    monkeypatch.setattr(cli_requests, "_call", engine)
    return engine


def test_submit_sends_the_definition_with_its_scripts(
    fake: FakeEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wfe submit`` sends the expanded definition, the bundled scripts and the params
    as text; with --wait it waits and exits 1 unless the request completed."""
    (tmp_path / "rscripts").mkdir()
    (tmp_path / "rscripts" / "work.py").write_text((SCRIPTS / "work.py").read_text())
    (tmp_path / "def.toml").write_text(HEAD + '[[stages]]\nname = "a"\nrscript = "work"\n')
    fake.answers.update(submit={"id": "t-bob-0001", "state": "submitted"})
    fake.answers.update(
        request_wait={"id": "t-bob-0001", "state": "failed", "error": "no", "failures": ["x"]}
    )
    code = cli.main(
        ["submit", str(tmp_path / "def.toml"), "--param", "n=3", "--user", "bob", "--wait"]
    )
    assert code == 1
    assert capsys.readouterr().out == "t-bob-0001 failed: no\n  x\n"
    (op, sent), (wait, asked) = fake.calls
    assert (op, wait, asked) == ("submit", "request_wait", {"request": "t-bob-0001"})
    assert sent["user"] == "bob" and sent["params"] == {"n": "3"}
    assert "priority" not in sent  # none given: the engine's default for the definition's type
    assert sent["expanded"]["workflow"]["name"] == "t"
    assert sent["scripts"] == {"work": (SCRIPTS / "work.py").read_text()}
    assert sent["sources"] == [str(tmp_path / "def.toml")]


def test_verbs_print_the_transition(fake: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    """``wfe pause ID`` prints what changed."""
    fake.answers["pause"] = {"request": "t-alice-0001", "from": "running", "state": "paused"}
    assert cli.main(["pause", "t-alice-0001"]) == 0
    assert capsys.readouterr().out == "t-alice-0001: running -> paused\n"
    assert fake.calls == [("pause", {"request": "t-alice-0001"})]


def test_a_refusal_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An engine refusal is printed as ``wfe: error: <line>`` with exit code 1."""
    from wfe.engine.cli.client import ClientError

    def refuse(args: Any, op: str, **call_args: Any) -> Any:
        raise ClientError("request t-alice-0001: can't resume in state RUNNING", "refused")

    monkeypatch.setattr(cli_requests, "_call", refuse)
    assert cli.main(["resume", "t-alice-0001"]) == 1
    assert (
        capsys.readouterr().err
        == "wfe: error: request t-alice-0001: can't resume in state RUNNING\n"
    )


def test_request_shows_stages_jobs_and_failures(
    fake: FakeEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wfe request ID`` renders the detail; --json prints it as is."""
    fake.answers["request"] = DETAIL
    assert cli.main(["request", "t-alice-0001"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("t-alice-0001  completed  (workflow t, user alice")
    assert "stage 'c' skipped: upstream stage 'b' failed" in out
    assert "a      done   2 processed" in out
    assert "j000001  a      b000001  2       succeeded  processed" in out
    assert cli.main(["request", "t-alice-0001", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == DETAIL


def test_catalog_add_sends_absolute_paths_and_metadata(
    fake: FakeEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Relative paths are made absolute; --meta values are JSON when they parse."""
    monkeypatch.chdir(tmp_path)
    fake.answers["catalog_add"] = [{"path": "/x", "new": True}, {"path": "/y", "new": False}]
    assert (
        cli.main(["catalog", "add", "a.csv", "b.csv", "--meta", "run=100", "--meta", "kind=raw"])
        == 0
    )
    assert capsys.readouterr().out == "catalogued 2 file(s): 1 new, 1 refreshed\n"
    [(op, sent)] = fake.calls
    assert sent == {
        "paths": [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")],
        "metadata": {"run": 100, "kind": "raw"},
    }


def test_provenance_prints_the_chain(fake: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    """``wfe provenance`` prints the product, how it was made and its raw inputs."""
    fake.answers["provenance"] = {
        "kind": "product", "id": "p000002", "type": "science", "path": "/p/b.out", "size": 4,
        "sha256": "c" * 64, "stage": "b", "request": "t-alice-0001", "definition": "d" * 64,
        "definition_name": "t", "git": {"commit": "e" * 40, "path": "def.toml", "dirty": True},
        "made_by": {"job": "j000002", "rscript": "tests/work@abc", "attempt": 1, "agent": "local-1"},
        "from": [{"kind": "catalog", "path": "/d/r1.dat", "size": 3, "sha256": "f" * 64}],
    }  # fmt: skip
    assert cli.main(["provenance", "p000002"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"p000002 science /p/b.out (4 B, sha256 {'c' * 12}…)",
        "  made by job j000002 (tests/work@abc, attempt 1, agent local-1) in stage b of t-alice-0001",
        f"  definition t sha256 {'d' * 64} (git {'e' * 12} def.toml dirty)",
        "  from:",
        f"    raw /d/r1.dat (3 B, sha256 {'f' * 12}…)",
    ]


async def test_the_commands_against_a_real_engine(tmp_path: Path) -> None:
    """catalog add, submit --wait, requests, request, products, provenance, and a refused
    verb, through ``wfe`` and the console API of a running engine."""
    from .conftest import open_world

    async with open_world(tmp_path) as world:
        for name in ("r1.dat", "r2.dat"):
            await trio.Path(world.data / name).write_text(f"{name}\n")
        code, out, _ = await world.wfe(
            "catalog",
            "add",
            str(world.data / "r1.dat"),
            str(world.data / "r2.dat"),
            "--meta",
            "kind=raw",
        )
        assert (code, out) == (0, "catalogued 2 file(s): 2 new, 0 refreshed\n")
        path = world.definition(
            HEAD + '[[stages]]\nname = "a"\nrscript = "work"\nconsumes = "query"\n'
        )
        code, out, err = await world.wfe("submit", str(path), "--user", "carol", "--wait")
        assert (code, out, err) == (0, "t-carol-0001 completed\n", "")
        code, out, _ = await world.wfe("requests")
        assert out.splitlines()[1].split() == ["t-carol-0001", "completed", "tests", "2/2"]
        code, out, _ = await world.wfe("request", "t-carol-0001")
        assert "a      done   2 processed" in out
        code, out, _ = await world.wfe("products", "t-carol-0001", "--json")
        made = json.loads(out)
        assert [p["metadata"]["source"] for p in made] == ["r1.dat", "r2.dat"]
        code, out, _ = await world.wfe("provenance", made[0]["id"])
        sha = hashlib.sha256(b"r1.dat\n").hexdigest()[:12]
        assert f"    raw {world.data / 'r1.dat'} (7 B, sha256 {sha}…)" in out.splitlines()
        code, _, err = await world.wfe("pause", "t-carol-0001")
        assert (code, err) == (
            1,
            "wfe: error: request t-carol-0001: can't pause in state COMPLETED\n",
        )
        code, out, _ = await world.wfe(
            "submit",
            str(path),
            "--user",
            "carol",
            "--namespace",
            "other",
            "--priority",
            "5",
            "--wait",
            "--json",
        )
        record = json.loads(out)
        assert (code, record["id"], record["namespace"], record["priority"]) == (
            0,
            "t-carol-0002",
            "other",
            5,
        )
        [job] = (await world.detail("t-carol-0002"))["jobs"]
        assert (await world.call("status", job=job["job"]))["priority"] == 5
