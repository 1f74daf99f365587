"""Reading TOML files and merging includes into one expanded table.

Merge rules (``deep_merge(base, over)``; ``over`` wins):

* Tables merge key by key, recursively.
* The top-level array of tables ``stages`` merges **by name**: an entry of ``over`` whose
  ``name`` matches an earlier stage is deep-merged into it and keeps the earlier position;
  a new name is appended, in ``over``'s order. So an including file can change one key
  of one stage (``[[stages]] name = "grid"  max_inputs = 8``) without repeating it.
* Every other value, arrays included (``after``, ``tags``, ``query.where``...), is
  replaced whole by the later one. A key can be changed but not deleted by a later file.

Include rules (``expand_includes(path)``):

* ``[workflow] includes = ["a.toml", ...]`` are paths relative to the including file.
* Depth first: a file's includes are merged, in order, before the file itself, so later
  includes override earlier ones and the including file (finally the main file) has the
  last word.
* A file reached twice (a diamond) is merged once, at its first occurrence.
* A cycle raises ``IncludeError`` naming the chain; a missing file names who included it.
* ``includes`` itself is not part of the expanded result; ``sources`` records the files.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wfe.engine.definitions.errors import (
    DagError,
    DefinitionSyntaxError,
    IncludeError,
    InvalidDefinition,
)

#: Top-level arrays of tables that merge by their ``name`` key.
MERGE_BY_NAME = frozenset({"stages"})

_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def read_toml(path: Path, *, included_by: Path | None = None) -> dict[str, Any]:
    """Parse one TOML file. Raises ``IncludeError`` if missing, ``DefinitionSyntaxError``.

    Syntax errors read ``file.toml:12: <what> (column 5)``.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        who = f" (included by {included_by})" if included_by is not None else ""
        raise IncludeError(f"{path}: no such file{who}") from None
    except IsADirectoryError:
        raise IncludeError(f"{path}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise IncludeError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DefinitionSyntaxError(f"{path}:{line}: not valid UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _AT.search(message)
        if found:
            at_line, at_column = found.groups()
            what = message[: found.start()]
            raise DefinitionSyntaxError(f"{path}:{at_line}: {what} (column {at_column})") from None
        line_count = text.count("\n") + 1
        what = message.replace(" (at end of document)", "")
        raise DefinitionSyntaxError(f"{path}:{line_count}: {what} (at end of file)") from None


def expand_includes(path: Path) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """Read ``path`` and everything it includes; return the merged data and the files.

    The files are returned resolved (absolute), in merge order, the main file last.
    Raises ``IncludeError``, ``DefinitionSyntaxError``, ``DagError`` (a file that names
    one stage twice).
    """
    merged: dict[str, Any] = {}
    done: list[Path] = []
    chain: list[tuple[Path, Path]] = []  # (shown, resolved) of the files being visited

    def visit(shown: Path, included_by: Path | None) -> None:
        nonlocal merged
        resolved = shown.resolve()
        if any(resolved == r for _, r in chain):
            start = next(i for i, (_, r) in enumerate(chain) if r == resolved)
            names = [str(s) for s, _ in chain[start:]] + [str(shown)]
            raise IncludeError(f"include cycle: {' -> '.join(names)}")
        if resolved in done:
            return
        data = read_toml(shown, included_by=included_by)
        includes = _pop_includes(data, shown)
        _check_unique_stages(data, shown)
        chain.append((shown, resolved))
        for name in includes:
            visit(Path(os.path.normpath(shown.parent / name)), shown)
        chain.pop()
        merged = deep_merge(merged, data)
        done.append(resolved)

    visit(Path(os.path.normpath(path)), None)
    return merged, tuple(done)


def _pop_includes(data: dict[str, Any], shown: Path) -> list[str]:
    workflow = data.get("workflow")
    if not isinstance(workflow, dict) or "includes" not in workflow:
        return []
    includes = workflow.pop("includes")
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise IncludeError(f"{shown}: workflow.includes: expected an array of file names")
    return includes


def _check_unique_stages(data: Mapping[str, Any], shown: Path) -> None:
    stages = data.get("stages")
    if not isinstance(stages, list):
        return
    seen: set[str] = set()
    for i, stage in enumerate(stages):
        name = stage.get("name") if isinstance(stage, dict) else None
        if isinstance(name, str):
            if name in seen:
                raise DagError(f"{shown}: stages[{i}].name: duplicate stage {name!r}")
            seen.add(name)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``over`` merged on top (see the module doc); inputs unchanged."""
    return _merge(base, over, top=True)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any], *, top: bool) -> dict[str, Any]:
    result = copy.deepcopy(dict(base))
    for key, value in over.items():
        old = result.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            result[key] = _merge(old, value, top=False)
        elif top and key in MERGE_BY_NAME and isinstance(old, list) and isinstance(value, list):
            result[key] = _merge_by_name(old, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_by_name(base: list[Any], over: list[Any]) -> list[Any]:
    result = list(base)
    index = {
        item["name"]: i
        for i, item in enumerate(result)
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    }
    for item in over:
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name in index:
            result[index[name]] = _merge(result[index[name]], item, top=False)
        else:
            if isinstance(name, str):
                index[name] = len(result)
            result.append(copy.deepcopy(item))
    return result


def plain(value: Any, path: str = "") -> Any:
    """Return ``value`` as JSON-ready data: TOML dates and times become ISO 8601 strings.

    Raises ``InvalidDefinition`` for ``nan`` or ``inf``, which JSON cannot hold.
    """
    if isinstance(value, dict):
        return {k: plain(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidDefinition(f"{path}: expected a finite number, not {value}")
    return value
