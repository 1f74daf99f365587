"""The Python API (``from wfe import Work``) from plain synchronous code, against a real engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

DOC = Path(__file__).parents[3] / "docs" / "python-api.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def run_python(code: str, cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WFE_CONFIG": str(config), "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_seed_example_works_as_written_in_the_doc(engine_process: Path, tmp_path: Path) -> None:
    """docs/python-api.md's blocks, run in order as plain scripts: the work is deposited,
    withdrawn by hand, performed with ``add`` and updated; the engine then holds it as a
    success with ``a + b`` as its results."""
    blocks = python_blocks()
    module = next(b for b in blocks if b.startswith("# mymodule.py"))
    (tmp_path / "mymodule.py").write_text(module)
    seed = [b for b in blocks if "deposit()" in b or "Work.withdraw(" in b]
    assert len(seed) == 2
    for block in seed:
        done = run_python(block, tmp_path, engine_process)
        assert done.returncode == 0, done.stderr
    check = textwrap.dedent(
        """
        import json
        from wfe import Work
        (work,) = Work.find("sample-pipeline")
        print(json.dumps(work.payload))
        """
    )
    done = run_python(check, tmp_path, engine_process)
    assert done.returncode == 0, done.stderr
    stored = json.loads(done.stdout)
    assert (stored["status"], stored["results"], stored["attempt"]) == ("success", 3, 1)
    assert stored["start"] <= stored["stop"]


def test_the_trio_twin_and_the_query_verbs(engine_process: Path, tmp_path: Path) -> None:
    """The doc's trio block deposits a hundred works in one call and performs one; the
    synchronous query verbs count and page them."""
    trio_block = next(b for b in python_blocks() if "open_bucket" in b)
    done = run_python(trio_block, tmp_path, engine_process)
    assert done.returncode == 0, done.stderr
    check = textwrap.dedent(
        """
        from wfe import Work
        print(Work.count("p"), Work.count("p", status="success"), Work.count("p", status="queued"))
        page = Work.find("p", limit=10, offset=95)
        print([w.parameters["n"] for w in page])
        (done,) = Work.find("p", status="success")
        print(done.results, done.priority)
        """
    )
    done = run_python(check, tmp_path, engine_process)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "100 1 99"
    assert lines[1] == "[4, 3, 2, 1, 0]"
    assert lines[2] == "{'n2': 0} 3"


def test_a_bad_work_is_one_line_and_nothing_is_sent(engine_process: Path, tmp_path: Path) -> None:
    """Making, or depositing after a bad change, a bad work raises WorkError with one line
    naming the field; the bucket stays empty. An unknown attribute is refused too."""
    code = textwrap.dedent(
        """
        from wfe import Work
        from wfe.work import WorkError
        for make in (
            lambda: Work(pipeline="p", priority=9),
            lambda: Work(pipeline="p", colour="red"),
            lambda: Work(pipeline="p", timeout=0),
            lambda: Work(pipeline="p", parameters={"x": {1}}),
            lambda: Work(pipeline="p", function="m.f", command="true"),
        ):
            try:
                make()
            except WorkError as exc:
                print(exc)
        work = Work(pipeline="p")
        work.priority = 7
        try:
            work.deposit()
        except WorkError as exc:
            print(exc)
        try:
            work.colour = "red"
        except AttributeError as exc:
            print(str(exc).split(" (")[0])
        print(Work.count())
        """
    )
    done = run_python(code, tmp_path, engine_process)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:6]] == [
        "priority",
        "colour",
        "timeout",
        "parameters",
        "function, command",
        "priority",
    ]
    assert lines[5] == "priority: must be 1..5, got 7"
    assert lines[6:] == ["Work has no field 'colour'", "0"]
