"""The layering rules of wfe, each checked in a fresh interpreter or over the source tree.

- ``wfe`` is the one import name: no module imports a bare ``engine``, ``agents``, ...
- ``wfe.protocols`` is pure: importing it loads no I/O library.
- the agent side (``wfe.agents``, with ``wfe.links`` and ``wfe.protocols``) never loads an engine module.
- slixmpp and trio-asyncio are imported by one adapter module, ``wfe.links.xmpp``, and only
  load when XMPP is used.
- the CLI's console client does not load the engine runtime.

Subprocesses run with ``-P`` from an empty directory, so nothing in the working directory
shadows the installed (or editable) ``wfe``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import wfe

ROOT = Path(wfe.__file__).resolve().parent.parent
PARTS = ("engine", "agents", "protocols", "links", "rscripts")
IO_LIBRARIES = (
    "trio",
    "asyncio",
    "socket",
    "sqlite3",
    "slixmpp",
    "subprocess",
    "trio_asyncio",
    "trio_websocket",
)
#: Walks a package and imports every module in it (subpackages included; not ``__main__``).
WALK = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        if not info.name.endswith(".__main__"):
            importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after(tmp_path: Path, code: str, *args: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    result = subprocess.run(
        [sys.executable, "-P", "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def loaded_by_import(tmp_path: Path, *modules: str) -> set[str]:
    code = f"import json, sys, {', '.join(modules)}; print(json.dumps(sorted(sys.modules)))"
    return loaded_after(tmp_path, code)


def top(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in prefixes)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every module name an ``import`` or ``from ... import`` of ``path`` names, with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def sources() -> list[Path]:
    return sorted(p for part in PARTS for p in (ROOT / part).rglob("*.py"))


def test_every_module_imports_through_the_one_name_wfe() -> None:
    """No module of the tree, test or benchmark imports engine, agents, ... as a top-level name."""
    files = [
        *sources(),
        *sorted((ROOT / "tests").rglob("*.py")),
        *sorted((ROOT / "bench").rglob("*.py")),
    ]
    bare = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in files
        for name, line in imports_of(path)
        if name.split(".")[0] in PARTS
    ]
    assert bare == []


def test_protocols_loads_no_io_library(tmp_path: Path) -> None:
    """Every module of wfe.protocols, including ones added later, imports without I/O libraries."""
    loaded = loaded_after(tmp_path, WALK, "wfe.protocols")
    assert "wfe.protocols.messages" in loaded
    assert top(loaded, IO_LIBRARIES) == []


def test_the_agent_side_never_loads_an_engine_module(tmp_path: Path) -> None:
    """Importing every module of the agent, and the links and protocols it uses, loads nothing
    of wfe.engine: an agent host needs no engine code."""
    loaded = loaded_after(tmp_path, WALK, "wfe.agents", "wfe.links", "wfe.protocols")
    assert "wfe.agents.core" in loaded and "wfe.links.xmpp" in loaded
    assert sorted(n for n in loaded if n.startswith("wfe.engine")) == []


def test_agent_and_links_import_no_engine_module_in_source() -> None:
    """The same rule read from the source: no import of wfe.engine under agents/ or links/,
    and links/ (shared by both sides) imports neither side."""
    offending = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for part, banned in (("agents", ("wfe.engine",)), ("links", ("wfe.engine", "wfe.agents")))
        for path in sorted((ROOT / part).rglob("*.py"))
        for name, line in imports_of(path)
        if name.startswith(banned)
    ]
    assert offending == []


def test_only_the_xmpp_adapter_imports_slixmpp_or_trio_asyncio() -> None:
    """slixmpp and trio_asyncio appear in the imports of exactly one module: wfe.links.xmpp."""
    importers = sorted(
        {
            str(path.relative_to(ROOT))
            for path in sources()
            for name, _ in imports_of(path)
            if name.split(".")[0] in {"slixmpp", "trio_asyncio"}
        }
    )
    assert importers == ["links/xmpp.py"]


def test_slixmpp_loads_only_when_xmpp_is_used(tmp_path: Path) -> None:
    """The engine's daemon and the agent's entry point load slixmpp lazily: importing them (as a
    local-only engine or agent does) loads neither slixmpp nor trio_asyncio."""
    loaded = loaded_by_import(
        tmp_path, "wfe.engine.runtime.daemon", "wfe.engine.cli.main", "wfe.agents.main"
    )
    assert top(loaded, ("slixmpp", "trio_asyncio")) == []


def test_the_console_client_does_not_load_the_engine_runtime(tmp_path: Path) -> None:
    """``wfe.engine.cli.client`` (what every console subcommand uses) loads no part of the running
    engine: no runtime, dispatch, repository, transports or console server, and no sqlite3."""
    loaded = loaded_by_import(tmp_path, "wfe.engine.cli.client")
    runtime = [
        n
        for n in loaded
        if n.startswith(
            tuple(
                f"wfe.engine.{part}"
                for part in (
                    "runtime",
                    "dispatch",
                    "repository",
                    "transports",
                    "console",
                    "requests",
                )
            )
        )
    ]
    assert sorted(runtime) == []
    assert top(loaded, ("sqlite3", "slixmpp", "trio_asyncio")) == []


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    """``pip wheel .`` builds a distribution whose only top-level package is wfe (with the
    shipped scripts, actions and web page inside it)."""
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("wfe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"wfe"}
    for inside in (
        "wfe/engine/runtime/daemon.py",
        "wfe/agents/core.py",
        "wfe/links/xmpp.py",
        "wfe/engine/console/static/index.html",
        "wfe/rscripts/scripts/noop.sh",
    ):
        assert inside in names, inside
    assert any(n.startswith("wfe/engine/shipped_actions/demo/") for n in names)
