"""Loading actions from folders of tasklet files."""

from __future__ import annotations

from pathlib import Path

import pytest

from wfe.engine.errors import TaskletError, UnknownAction
from wfe.engine.runtime.tasklets import ActionLibrary, ParamTypeError


def write(root: Path, action: str, name: str, text: str) -> None:
    domain, act = action.split(".")
    folder = root / domain / act
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_tasklets_run_in_priority_then_name_order(tmp_path: Path) -> None:
    """Lower __priority__ first, ties broken by file name."""
    write(tmp_path, "x.go", "b.py", "__priority__ = 1\nasync def main(ctx, params): pass\n")
    write(tmp_path, "x.go", "a.py", "__priority__ = 1\nasync def main(ctx, params): pass\n")
    write(tmp_path, "x.go", "0.py", "__priority__ = 9\nasync def main(ctx, params): pass\n")
    action = ActionLibrary([tmp_path]).get("x.go")
    assert [t.name for t in action.tasklets] == ["x.go/a", "x.go/b", "x.go/0"]


def test_user_roots_come_before_shipped_actions(tmp_path: Path) -> None:
    """A user folder with the same action name overrides the shipped one."""
    write(tmp_path, "demo.survey", "only.py", "async def main(ctx, params): return 1\n")
    library = ActionLibrary([tmp_path])
    assert [t.name for t in library.get("demo.survey").tasklets] == ["demo.survey/only"]
    assert "demo.inspect" in library.names()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("def main(ctx, params): pass\n", "needs `async def main(ctx, params)`"),
        ("async def main(ctx, params):\n  return (\n", "t.py:2: syntax error"),
        ("raise RuntimeError('boom')\n", "failed to load: RuntimeError: boom"),
        (
            "__priority__ = 'high'\nasync def main(ctx, params): pass\n",
            "__priority__ must be an integer",
        ),
        (
            "__tags__ = 'x'\nasync def main(ctx, params): pass\n",
            "__tags__ must be a tuple of strings",
        ),
        (
            "__params__ = {'n': object}\nasync def main(ctx, params): pass\n",
            "__params__ must map names",
        ),
    ],
)
def test_bad_tasklet_files_are_refused_with_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    write(tmp_path, "bad.one", "t.py", text)
    with pytest.raises(TaskletError) as info:
        ActionLibrary([tmp_path]).get("bad.one")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_and_malformed_action_names(tmp_path: Path) -> None:
    library = ActionLibrary([tmp_path])
    with pytest.raises(UnknownAction, match="unknown action 'no.such' \\(known: .*demo.survey"):
        library.get("no.such")
    with pytest.raises(UnknownAction, match="expected <domain>.<action>"):
        library.get("nodot")


def test_declared_params_are_checked(tmp_path: Path) -> None:
    """__params__ refuses a wrong type or an unknown name; ints pass as floats."""
    write(
        tmp_path,
        "p.q",
        "t.py",
        "__params__ = {'n': int, 'x': float}\nasync def main(ctx, params): pass\n",
    )
    action = ActionLibrary([tmp_path]).get("p.q")
    action.check_params({"n": 3, "x": 2})
    with pytest.raises(ParamTypeError, match="action p.q: parameter 'n' must be int, got str"):
        action.check_params({"n": "3"})
    with pytest.raises(ParamTypeError, match="parameter 'n' must be int, got bool"):
        action.check_params({"n": True})
    with pytest.raises(ParamTypeError, match="unknown parameter 'm'"):
        action.check_params({"m": 1})
