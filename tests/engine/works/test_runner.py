"""The processes a worker runs works in, as real child processes."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from wfe.engine.works.child import shape
from wfe.engine.works.runner import FunctionChild, run_command

GUARD = 30

MODULE = textwrap.dedent(
    """
    import os, time

    def pid(**_):
        return os.getpid()

    def sleep(seconds):
        time.sleep(seconds)

    def die(code):
        os._exit(code)

    def nan():
        return float("nan")
    """
)


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "runner_mod.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    yield "runner_mod"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_one_child_serves_work_after_work(module: str) -> None:
    """The function is imported once: consecutive works run in the same process."""
    with trio.fail_after(GUARD):
        child = FunctionChild(f"{module}.pid")
        first = await child.call({})
        second = await child.call(None)
        assert first["ok"] and first["results"] == second["results"]
        assert child.started == 1
        await child.close()
        assert not alive(first["results"])


async def test_a_cancelled_work_kills_its_child_and_the_next_gets_a_new_one(module: str) -> None:
    """Cancelling a call (a timeout) kills the child; the next call starts another."""
    with trio.fail_after(GUARD):
        sleeper = FunctionChild(f"{module}.sleep")
        with trio.move_on_after(0.5) as scope:
            await sleeper.call({"seconds": 600})
        assert scope.cancelled_caught
        assert (await sleeper.call({"seconds": 0}))["ok"]
        assert sleeper.started == 2
        await sleeper.close()


async def test_a_dying_function_a_bad_spec_and_a_non_json_return_are_failures(module: str) -> None:
    """A child that exits mid-work, a function that can't be imported, and a return value
    JSON can't carry each give a failure outcome with a one-line error."""
    with trio.fail_after(GUARD):
        dying = FunctionChild(f"{module}.die")
        outcome = await dying.call({"code": 3})
        assert outcome == {
            "ok": False,
            "error": "the function's process exited with code 3 without a result",
        }
        await dying.close()
        missing = FunctionChild("no_such_module.f")
        for _ in range(2):
            outcome = await missing.call({})
            assert outcome["error"] == "ModuleNotFoundError: No module named 'no_such_module'"
        await missing.close()
        nan = FunctionChild(f"{module}.nan")
        outcome = await nan.call({})
        assert outcome["error"].startswith("TypeError: the function's return value is not JSON")
        await nan.close()


def test_a_return_value_becomes_results_products_and_plots() -> None:
    """A 3-tuple is (results, products, plots), paths made absolute (the engine archives
    them); anything else is the results."""
    assert shape(({"a": 1}, ["p.fits"], ["/data/p.png"])) == {
        "results": {"a": 1},
        "products": [os.path.join(os.getcwd(), "p.fits")],
        "plots": ["/data/p.png"],
    }
    assert shape(3) == {"results": 3, "products": None, "plots": None}
    with pytest.raises(TypeError, match="the returned products must be a list of paths"):
        shape(({}, "p.fits", []))


async def test_a_command_gets_its_parameters_and_its_exit_code_decides(tmp_path: Path) -> None:
    """A work's command sees its parameters in WFE_PARAMETERS; exit 0 is success."""
    with trio.fail_after(GUARD):
        out = tmp_path / "seen"
        assert await run_command(f'echo "$WFE_PARAMETERS" > {out}', "w1", {"x": 1}) == {
            "ok": True,
            "results": None,
        }
        assert out.read_text().strip() == '{"x": 1}'
        assert await run_command("exit 2", "w1", None) == {
            "ok": False,
            "error": "the command exited with code 2",
        }
