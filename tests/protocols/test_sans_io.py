"""protocols stays sans-IO: importing it loads no I/O library."""

from __future__ import annotations

import subprocess
import sys

CHECK = (
    "import protocols, wfe.protocols.codec, wfe.protocols.framing, wfe.protocols.attempt,"
    " wfe.protocols.action_run, wfe.protocols.signing, wfe.protocols.messages; import sys;"
    " print(sorted(m for m in sys.modules if m.split('.')[0] in {'trio','asyncio','socket',"
    "'sqlite3','slixmpp','subprocess','trio_asyncio','trio_websocket'}))"
)


def test_importing_protocols_loads_no_io_library() -> None:
    """A fresh interpreter that imports every protocols module has loaded none of the I/O libraries."""
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


WALK = (
    "import importlib, pkgutil, sys, protocols\n"
    "for info in pkgutil.iter_modules(protocols.__path__):\n"
    "    importlib.import_module('protocols.' + info.name)\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in {'trio','asyncio','socket',"
    "'sqlite3','slixmpp','subprocess','trio_asyncio','trio_websocket','aiosqlite'}))"
)


def test_no_protocols_module_loads_an_io_library() -> None:
    """Every module in protocols, including ones added later, imports without I/O libraries."""
    result = subprocess.run(
        [sys.executable, "-c", WALK], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
