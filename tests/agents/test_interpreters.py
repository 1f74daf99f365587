"""Which program runs a script: the ``# interpreter:`` header line, and the caches."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given

from wfe.agents.interpreters import (
    find_program,
    forget_programs,
    interpreter_of,
    script_interpreter,
)
from wfe.protocols.messages import Dispatch, Limits
from wfe.protocols.signing import script_sha256


def test_interpreter_header_examples() -> None:
    """The interpreter comes from the header block; the default is sh."""
    assert script_interpreter("echo hi\n") == ["sh"]
    assert script_interpreter("# interpreter: bash\necho\n") == ["bash"]
    assert script_interpreter("#!/bin/sh\n\n#  interpreter :  python3 -u \n") == ["python3", "-u"]
    assert script_interpreter("echo\n# interpreter: bash\n") == ["sh"]  # not in the header
    with pytest.raises(ValueError, match="names no interpreter"):
        script_interpreter("# interpreter:\n")
    with pytest.raises(ValueError):
        script_interpreter("# interpreter: 'python3\n")


@given(st.text())
def test_interpreter_header_never_fails_otherwise(script: str) -> None:
    """Any text gives a non-empty command or a ValueError, nothing else."""
    try:
        command = script_interpreter(script)
    except ValueError:
        return
    assert command and all(isinstance(part, str) and part for part in command)


@given(
    st.sampled_from(["sh", "bash", "python3", "perl -w"]), st.lists(st.text(alphabet="# abc:\n"))
)
def test_interpreter_header_is_found_among_other_header_lines(
    interpreter: str, others: list[str]
) -> None:
    """The key is found wherever it sits in a block of comment lines."""
    lines = ["# " + o.replace("\n", " ").replace("interpreter", "") for o in others]
    script = "\n".join([*lines, f"# interpreter: {interpreter}", "echo body"])
    assert script_interpreter(script) == interpreter.split()


def test_a_script_is_read_once_per_digest() -> None:
    """interpreter_of gives the header's command, and the same answer for the same script."""
    script = "# interpreter: python3 -u\nprint(1)\n"
    dispatch = Dispatch(
        job_id="job-1",
        attempt=1,
        script_name="test",
        script=script,
        sha256=script_sha256(script),
        params={},
        limits=Limits(timeout=1.0),
    )
    assert interpreter_of(dispatch) == ("python3", "-u")
    assert interpreter_of(dispatch) is interpreter_of(dispatch)


def test_a_program_is_found_on_path_and_a_miss_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """find_program searches PATH; a program that appears after a miss is found next time."""
    monkeypatch.setenv("PATH", str(tmp_path))
    forget_programs()
    assert find_program("wfe-test-tool") is None
    tool = tmp_path / "wfe-test-tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert find_program("wfe-test-tool") == str(tool)
    tool.unlink()
    assert find_program("wfe-test-tool") == str(tool)  # remembered once found
    forget_programs()
    assert find_program("wfe-test-tool") is None
