"""Shared fixtures: hypothesis strategies for headers (``hdr``) and a real script runner."""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import strategies as st

from wfe.rscripts import (
    INTERPRETERS,
    MISSING,
    ParamSpec,
    ParamType,
    Requirements,
    RScript,
    ScriptHeader,
    load_result,
    validate_params,
)

# --- strategies ---------------------------------------------------------------------------

_line_text = st.text(st.characters(exclude_categories=("Cc", "Cs"))).map(str.strip)
_description = _line_text.filter(lambda s: not s.startswith(("=", "(required)")))
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_ALNUM = _LOWER + _LOWER.upper() + "0123456789"


def _ident(first: str, rest: str, max_size: int) -> st.SearchStrategy[str]:
    """Cheaper than ``st.from_regex`` for ``[first][rest]{0,max_size}``."""
    return st.builds(operator.add, st.sampled_from(first), st.text(rest, max_size=max_size))


_word = _ident(_ALNUM, _ALNUM + "_.-", 10)
_json_scalar = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)
VALUES: dict[ParamType, st.SearchStrategy[Any]] = {
    ParamType.STR: st.text(),
    ParamType.PATH: st.text(min_size=1).filter(lambda s: "\0" not in s),
    ParamType.INT: st.integers(),
    ParamType.FLOAT: st.floats(allow_nan=False, allow_infinity=False),
    ParamType.BOOL: st.booleans(),
    ParamType.LIST: st.lists(_json, max_size=3),
    ParamType.DICT: st.dictionaries(st.text(), _json, max_size=3),
}


@st.composite
def _param(draw: st.DrawFn) -> ParamSpec:
    ptype = draw(st.sampled_from(ParamType))
    kind = draw(st.sampled_from(["required", "default", "null", "optional"]))
    default: Any = MISSING
    if kind == "default":
        default = draw(VALUES[ptype])
    elif kind == "null":
        default = None
    return ParamSpec(
        name=draw(_ident(_ALNUM[:52] + "_", _ALNUM + "_", 10)),
        type=ptype,
        required=kind == "required",
        default=default,
        description=draw(_description),
    )


_requirements = st.builds(
    Requirements,
    cpus=st.integers(1, 999_999),
    memory=st.none() | st.integers(1, 2**50),
    tags=st.lists(_word, max_size=3),
    site=st.none() | _word,
)

_header = st.builds(
    ScriptHeader,
    name=_ident(_LOWER, _LOWER + "0123456789_-", 20),
    version=_ident(_ALNUM, _ALNUM + "._+-", 10),
    interpreter=st.sampled_from(sorted(INTERPRETERS)),
    description=_line_text,
    timeout=st.none() | st.floats(1e-3, 1e9) | st.integers(1, 10**9).map(float),
    memory=st.none() | st.integers(1, 2**50),
    params=st.lists(_param(), max_size=5, unique_by=lambda p: p.name).map(tuple),
    requires=_requirements,
)


@pytest.fixture(scope="session")
def hdr() -> types.SimpleNamespace:
    """Strategies: ``header`` (valid ScriptHeader), ``param``, ``values`` by ParamType."""
    return types.SimpleNamespace(header=_header, param=_param(), values=VALUES)


# --- running scripts ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Run:
    """What a real run of a script left behind."""

    returncode: int
    stdout: bytes
    stderr: bytes
    result: dict[str, Any] | None  # the checked result as JSON data, None if none written
    workdir: Path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # python3 found first on PATH is this interpreter: no slow version-manager shim.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("WFE_PARAMS", None)
    env.pop("WFE_RESULT", None)
    return env


def run_script(
    script: RScript,
    params: dict[str, Any],
    base: Path,
    *,
    via: str = "both",
    validate: bool = True,
    raw_params: str | None = None,
) -> Run:
    """Run ``script`` as an agent would: own working dir, params as JSON, result file.

    ``via`` is ``"both"`` (file and stdin, like the agent), ``"file"`` or ``"stdin"``.
    ``validate`` runs ``validate_params`` first (the engine always does); ``raw_params``
    replaces the params JSON text (then ``params`` is ignored).
    """
    if validate and raw_params is None:
        params = validate_params(script.header, params)
    text = json.dumps(params) if raw_params is None else raw_params
    workdir = base / "work"
    workdir.mkdir(parents=True)
    suffix = INTERPRETERS[script.header.interpreter].suffixes[0]
    path = base / f"{script.name}{suffix}"
    path.write_text(script.text, encoding="utf-8")
    params_path = base / "params.json"
    params_path.write_text(text, encoding="utf-8")
    result_path = base / "result.json"
    env = _env()
    env["WFE_RESULT"] = str(result_path)
    if via in ("both", "file"):
        env["WFE_PARAMS"] = str(params_path)
    stdin = text.encode() if via in ("both", "stdin") else b""
    argv = list(INTERPRETERS[script.header.interpreter].argv)
    if script.header.interpreter == "python3":
        argv = [sys.executable]
    proc = subprocess.run(
        [*argv, str(path)],
        cwd=workdir,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    result = None
    if result_path.exists():
        result = load_result(result_path.read_bytes(), script=script.name).as_dict()
    return Run(
        returncode=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        result=result,
        workdir=workdir,
    )


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., Run]:
    """``run(script, params, via="both", validate=True)`` runs a script in ``tmp_path``."""
    counter = iter(range(1_000_000))

    def _run(script: RScript, params: dict[str, Any], **kwargs: Any) -> Run:
        return run_script(script, params, tmp_path / f"run{next(counter)}", **kwargs)

    return _run


@pytest.fixture(scope="session")
def run_in(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Run]:
    """Like ``run`` but session-scoped, for hypothesis tests (fresh directory per call)."""

    def _run(script: RScript, params: dict[str, Any], **kwargs: Any) -> Run:
        return run_script(script, params, tmp_path_factory.mktemp("run"), **kwargs)

    return _run
