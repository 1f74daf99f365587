"""The RScript header: parse it from a script's text, render it back, check params against it.

Pure functions on strings: no file I/O, no clock.

Theory of operation: the header is the run of ``# key: value`` comment lines at the top of
a script, after an optional ``#!`` line. It ends at the first line that is not such a
comment (a blank line, a bare ``#``, prose, code). Its first line must be
``# wfe-rscript: 1``, so a file that merely starts with comments is never taken for an
RScript. Each other key is parsed by one function in ``_KEYS`` (the table below is the
whole grammar); ``param`` may repeat, every other key appears at most once. Errors name
the source, the 1-based line and the rule (``HeaderError``). The full reference is
``docs/rscripts.md``.
"""

from __future__ import annotations

import copy
import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from wfe.rscripts.errors import HeaderError, ParamError

FORMAT_VERSION: Final = 1
MARKER: Final = "wfe-rscript"
DEFAULT_TIMEOUT: Final = 3600.0  # seconds, when a header has no ``timeout``


class ParamType(enum.Enum):
    """The JSON type a parameter's value must have."""

    STR = "str"  # a JSON string
    INT = "int"  # a JSON integer (not a bool)
    FLOAT = "float"  # any finite JSON number; ints are converted to float
    BOOL = "bool"  # true or false
    PATH = "path"  # a non-empty string without NUL, a path on the agent host (not checked)
    LIST = "list"  # a JSON array
    DICT = "dict"  # a JSON object


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


#: ``ParamSpec.default`` of a parameter that has no default.
MISSING: Final = _Missing.MISSING


@attrs.frozen(kw_only=True)
class Interpreter:
    """A program an agent can run RScripts with: ``[*argv, script_path]``."""

    name: str
    argv: tuple[str, ...]
    shebang: str  # the ``#!`` line a script for it should start with
    suffixes: tuple[str, ...]  # file suffixes the library loads scripts for it from


INTERPRETERS: Final[Mapping[str, Interpreter]] = {
    i.name: i
    for i in (
        Interpreter(name="sh", argv=("/bin/sh",), shebang="#!/bin/sh", suffixes=(".sh",)),
        Interpreter(name="bash", argv=("bash",), shebang="#!/bin/bash", suffixes=(".bash",)),
        Interpreter(
            name="python3",
            argv=("python3",),
            shebang="#!/usr/bin/env python3",
            suffixes=(".py",),
        ),
    )
}


@attrs.frozen(kw_only=True)
class ParamSpec:
    """One declared parameter. ``default`` is ``MISSING`` when there is none."""

    name: str
    type: ParamType
    required: bool = False
    default: Any = MISSING
    description: str = ""


def _canonical_tags(tags: Any) -> tuple[str, ...]:
    return tuple(sorted(set(tags)))


@attrs.frozen(kw_only=True)
class Requirements:
    """What an agent must offer to run the script: free cpus, memory (bytes), tags, site."""

    cpus: int = 1
    memory: int | None = None
    tags: tuple[str, ...] = attrs.field(default=(), converter=_canonical_tags)
    site: str | None = None


@attrs.frozen(kw_only=True)
class ScriptHeader:
    """What a script's header declares. ``timeout`` in seconds, ``memory`` in bytes.

    ``timeout`` is ``DEFAULT_TIMEOUT`` when the header has no ``# timeout:`` line;
    ``declared_timeout`` tells that apart (None), for a caller with a default of its own.
    Construct with ``timeout=`` (or leave it out for "not declared").
    """

    name: str
    version: str
    interpreter: str
    description: str = ""
    declared_timeout: float | None = attrs.field(default=None, alias="timeout")
    memory: int | None = None  # the limit the agent enforces, None for none
    params: tuple[ParamSpec, ...] = ()
    requires: Requirements = Requirements()

    @property
    def timeout(self) -> float:
        """The per-attempt limit in seconds: the declared one, else ``DEFAULT_TIMEOUT``."""
        return DEFAULT_TIMEOUT if self.declared_timeout is None else self.declared_timeout

    def param(self, name: str) -> ParamSpec | None:
        """The parameter called ``name``, or None."""
        for spec in self.params:
            if spec.name == name:
                return spec
        return None


# --- value parsers -----------------------------------------------------------------------


class _Problem(Exception):
    """Raised by the value parsers; ``parse_header`` adds source and line."""


_LINE = re.compile(
    r"#[ \t]*(?P<key>[a-z][a-z0-9_-]*)(?:[ \t]+(?P<arg>[^\s:]+))?[ \t]*:(?P<value>.*)",
    re.ASCII,
)
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}", re.ASCII)
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", re.ASCII)
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}", re.ASCII)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_NUMBER = r"(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})(?:[eE][+-]?[0-9]{1,3})?"
_DURATION = re.compile(rf"(?P<n>{_NUMBER})[ \t]*(?P<unit>[smhd]?)", re.ASCII)
_SIZE = re.compile(r"(?P<n>[0-9]{1,20})[ \t]*(?:(?P<unit>[kmgtKMGT])(?:i?[bB])?)?", re.ASCII)
_PARAM_TYPE = re.compile(r"([^ \t]*)[ \t]*(.*)", re.ASCII | re.DOTALL)
_INT = re.compile(r"[0-9]{1,6}", re.ASCII)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise _Problem(
            f"bad name {value!r}: use 1-64 lowercase letters, digits, '_' or '-', "
            "starting with a letter"
        )
    return value


def _parse_version(value: str) -> str:
    if not _VERSION.fullmatch(value):
        raise _Problem(f"bad version {value!r}: use letters, digits and '._+-', no spaces")
    return value


def _parse_interpreter(value: str) -> str:
    if value not in INTERPRETERS:
        raise _Problem(f"unknown interpreter {value!r} (known: {', '.join(sorted(INTERPRETERS))})")
    return value


def _parse_description(value: str) -> str:
    return value


def _parse_timeout(value: str) -> float:
    m = _DURATION.fullmatch(value)
    seconds = float(m["n"]) * _UNITS[m["unit"]] if m else math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise _Problem(
            f"timeout must be a positive number of seconds (optionally with s, m, h or d), "
            f"got {value!r}"
        )
    return seconds


def parse_size(value: str) -> int:
    """Bytes from ``"256M"``-style text: an integer with an optional K/M/G/T suffix (x1024).

    Raises ``ValueError`` for anything else, zero included.
    """
    m = _SIZE.fullmatch(value.strip())
    size = int(m["n"]) * _SIZES[(m["unit"] or "").lower()] if m else 0
    if not size:
        raise ValueError(f"expected a size in bytes such as 512M or 2G, got {value!r}")
    return size


def format_size(size: int) -> str:
    """The shortest exact ``parse_size`` text for ``size`` bytes."""
    for unit, factor in sorted(_SIZES.items(), key=lambda item: -item[1]):
        if size % factor == 0:
            return f"{size // factor}{unit.upper()}"
    raise AssertionError("unreachable: every size is a multiple of 1")


def _parse_memory(value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise _Problem(f"memory: {exc}") from None


def _parse_requires(value: str) -> Requirements:
    fields: dict[str, Any] = {}
    known = ("cpus", "memory", "site", "tags")
    for item in value.split():
        key, eq, raw = item.partition("=")
        if not eq or not raw:
            raise _Problem(f"requires: expected key=value, got {item!r}")
        if key not in known:
            raise _Problem(f"requires: unknown key {key!r} (known: {', '.join(known)})")
        if key in fields:
            raise _Problem(f"requires: duplicate key {key!r}")
        if key == "cpus":
            if not _INT.fullmatch(raw) or int(raw) < 1:
                raise _Problem(f"requires: cpus must be a positive integer, got {raw!r}")
            fields[key] = int(raw)
        elif key == "memory":
            try:
                fields[key] = parse_size(raw)
            except ValueError as exc:
                raise _Problem(f"requires: memory: {exc}") from None
        elif key == "site":
            if not _WORD.fullmatch(raw):
                raise _Problem(f"requires: bad site {raw!r}")
            fields[key] = raw
        else:
            tags = raw.split(",")
            bad = [t for t in tags if not _WORD.fullmatch(t)]
            if bad:
                raise _Problem(f"requires: bad tag {bad[0]!r} (tags are comma-separated words)")
            fields[key] = tags
    return Requirements(**fields)


def _parse_param(name: str, value: str) -> ParamSpec:
    if not _PARAM_NAME.fullmatch(name):
        raise _Problem(f"bad parameter name {name!r}: use letters, digits and '_'")
    word, rest = _PARAM_TYPE.fullmatch(value).group(1, 2)  # type: ignore[union-attr]
    try:
        ptype = ParamType(word)
    except ValueError:
        known = ", ".join(t.value for t in ParamType)
        raise _Problem(f"parameter {name!r}: unknown type {word!r} (known: {known})") from None
    required = False
    default: Any = MISSING
    if rest.startswith("(required)"):
        required = True
        rest = rest.removeprefix("(required)")
        if rest.lstrip().startswith("="):
            raise _Problem(f"parameter {name!r} can't be both required and have a default")
    elif rest.startswith("="):
        body = rest[1:].lstrip()
        try:
            default, end = _JSON.raw_decode(body)
        except (ValueError, RecursionError):
            raise _Problem(
                f"parameter {name!r}: can't parse default {body.split(' ')[0]!r} as JSON "
                '(quote strings: = "text")'
            ) from None
        rest = body[end:]
        problem = _type_problem(ptype, default) if default is not None else None
        if problem:
            raise _Problem(f"parameter {name!r}: default {problem}")
        if ptype is ParamType.FLOAT and default is not None:
            default = float(default)
    else:
        rest = f" {rest}"
    if rest and not rest[0].isspace():
        raise _Problem(f"parameter {name!r}: put a space before the description")
    return ParamSpec(
        name=name, type=ptype, required=required, default=default, description=rest.strip()
    )


_KEYS: Final[dict[str, Callable[[str], Any]]] = {
    "name": _parse_name,
    "version": _parse_version,
    "interpreter": _parse_interpreter,
    "description": _parse_description,
    "timeout": _parse_timeout,
    "memory": _parse_memory,
    "requires": _parse_requires,
}
_REQUIRED: Final = ("name", "version", "interpreter")
_KNOWN_KEYS: Final = ", ".join(sorted([*_KEYS, "param"]))


# --- parsing -----------------------------------------------------------------------------


def parse_header(text: str, *, source: str) -> ScriptHeader:
    """Parse the header at the top of a script's ``text``.

    ``source`` names the script in error messages (usually its file name). Raises
    ``HeaderError`` (one line: ``source:line: problem``) for anything that is not a valid
    header, and nothing else.
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    start = 1 if lines[0].startswith("#!") else 0
    _check_marker(_LINE.fullmatch(lines[start]) if start < len(lines) else None, source, start + 1)
    fields: dict[str, Any] = {}
    key_lines: dict[str, int] = {MARKER: start + 1}
    param_lines: dict[str, int] = {}
    params: list[ParamSpec] = []
    end = start + 2  # the 1-based number of the first line after the header
    for lineno in range(start + 2, len(lines) + 1):
        match = _LINE.fullmatch(lines[lineno - 1])
        if match is None:
            break
        end = lineno + 1
        key, arg, value = match["key"], match["arg"], match["value"].strip()
        try:
            if key == "param":
                if arg is None:
                    raise _Problem("param needs a name: '# param NAME: TYPE ...'")
                if arg in param_lines:
                    raise _Problem(
                        f"duplicate parameter {arg!r} (first on line {param_lines[arg]})"
                    )
                param_lines[arg] = lineno
                params.append(_parse_param(arg, value))
                continue
            if key not in _KEYS and key != MARKER:
                raise _Problem(f"unknown header key {key!r} (known: {_KNOWN_KEYS})")
            if key in key_lines:
                raise _Problem(f"duplicate key {key!r} (first on line {key_lines[key]})")
            if arg is not None:
                raise _Problem(f"key {key!r} takes no argument, write '# {key}: ...'")
            key_lines[key] = lineno
            if not value and key != "description":
                raise _Problem(f"key {key!r} has an empty value")
            fields[key] = _KEYS[key](value)
        except _Problem as exc:
            raise HeaderError(source, lineno, str(exc)) from None
    for key in _REQUIRED:
        if key not in fields:
            raise HeaderError(
                source, end, f"header ends without {key!r}: add a '# {key}: ...' line"
            )
    return ScriptHeader(params=tuple(params), **fields)


def _check_marker(match: re.Match[str] | None, source: str, lineno: int) -> None:
    want = f"# {MARKER}: {FORMAT_VERSION}"
    if match is None or match["key"] != MARKER or match["arg"] is not None:
        raise HeaderError(source, lineno, f"not an RScript: the header must start with {want!r}")
    if match["value"].strip() != str(FORMAT_VERSION):
        raise HeaderError(
            source,
            lineno,
            f"unsupported header format {match['value'].strip()!r} (this wfe reads {want!r})",
        )


def format_header(header: ScriptHeader, *, shebang: bool = True) -> str:
    """The canonical header text for ``header``; ``parse_header`` of it gives ``header`` back.

    Ends with a newline. ``shebang`` adds the interpreter's ``#!`` line first.
    """
    out = [INTERPRETERS[header.interpreter].shebang] if shebang else []
    out += [
        f"# {MARKER}: {FORMAT_VERSION}",
        f"# name: {header.name}",
        f"# version: {header.version}",
        f"# interpreter: {header.interpreter}",
    ]
    if header.description:
        out.append(f"# description: {header.description}")
    timeout = header.declared_timeout
    if timeout is not None:  # none declared: left out, so it parses back the same
        out.append(
            f"# timeout: {int(timeout) if timeout.is_integer() and timeout < 1e15 else timeout!r}"
        )
    if header.memory is not None:
        out.append(f"# memory: {format_size(header.memory)}")
    for spec in header.params:
        line = f"# param {spec.name}: {spec.type.value}"
        if spec.required:
            line += " (required)"
        elif spec.default is not MISSING:
            line += f" = {json.dumps(spec.default, ensure_ascii=False)}"
        out.append(f"{line} {spec.description}".rstrip())
    req = header.requires
    words = [f"cpus={req.cpus}"]
    if req.memory is not None:
        words.append(f"memory={format_size(req.memory)}")
    if req.tags:
        words.append(f"tags={','.join(req.tags)}")
    if req.site is not None:
        words.append(f"site={req.site}")
    out.append(f"# requires: {' '.join(words)}")
    return "\n".join(out) + "\n"


# --- parameters --------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for t in (bool, int, float, str, list, dict):
        if isinstance(value, t):
            return t.__name__
    return type(value).__name__


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too big for a float
        return False


def _type_problem(ptype: ParamType, value: Any) -> str | None:
    """Why ``value`` is not of ``ptype`` (one phrase), or None when it is."""
    got = _json_type(value)
    ok = {
        ParamType.STR: got == "str",
        ParamType.PATH: got == "str",
        ParamType.INT: got == "int",
        ParamType.FLOAT: got in ("int", "float"),
        ParamType.BOOL: got == "bool",
        ParamType.LIST: got == "list",
        ParamType.DICT: got == "dict",
    }[ptype]
    if not ok:
        return f"must be {ptype.value}, got {got}"
    if ptype is ParamType.FLOAT and not _finite(value):
        return "must be a finite number"
    if ptype is ParamType.PATH and (not value or "\0" in value):
        return "must be a non-empty path without NUL characters"
    if ptype in (ParamType.LIST, ParamType.DICT):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return f"must be plain JSON data (a {ptype.value} of strings, numbers, ...)"
    return None


def validate_params(header: ScriptHeader, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the header; return them with defaults filled in.

    The result has one entry per declared parameter that was given or has a default, in
    declaration order; float parameters become floats; defaults are copies. Raises
    ``ParamError`` (``name: parameter 'x' ...``) for an unknown, missing or mistyped one.
    ``null`` is accepted only where the default is ``null``.
    """
    if not isinstance(params, Mapping):
        raise ParamError(header.name, f"params must be a JSON object, got {_json_type(params)}")
    declared = {spec.name for spec in header.params}
    for key in params:
        if key not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ParamError(header.name, f"unknown parameter {key!r} (known: {known})")
    out: dict[str, Any] = {}
    for spec in header.params:
        if spec.name not in params:
            if spec.required:
                raise ParamError(header.name, f"parameter {spec.name!r} is required")
            if spec.default is not MISSING:
                out[spec.name] = copy.deepcopy(spec.default)
            continue
        value = params[spec.name]
        if value is None and spec.default is None:
            out[spec.name] = None
            continue
        problem = _type_problem(spec.type, value)
        if problem:
            raise ParamError(header.name, f"parameter {spec.name!r} {problem}")
        out[spec.name] = float(value) if spec.type is ParamType.FLOAT else copy.deepcopy(value)
    return out
