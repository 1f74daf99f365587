"""Read RScripts from files and keep them in a library by name.

A library is built from directories in order: the shipped ``rscripts/scripts/`` first,
then the user's, each overriding earlier ones by script name. In a directory, every file
whose suffix belongs to a known interpreter (``.sh``, ``.bash``, ``.py``) and whose name does
not start with ``.`` is an RScript; other files are ignored. A script's file name without
suffix must equal its header ``name``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

import attrs

from wfe.rscripts.errors import HeaderError, LibraryError, RScriptError, UnknownRScript
from wfe.rscripts.header import INTERPRETERS, ScriptHeader, parse_header

#: The directory of the RScripts that ship with wfe.
SHIPPED_DIR: Final = Path(__file__).resolve().with_name("scripts")

#: Upper bound for a script's text in UTF-8: it travels whole inside one ``Dispatch`` message,
#: which must fit in an XMPP stanza (Prosody's default cap is 256 KiB) after JSON escaping.
MAX_SCRIPT_BYTES: Final = 128 * 1024

_SUFFIXES: Final = frozenset(s for i in INTERPRETERS.values() for s in i.suffixes)


@attrs.frozen(kw_only=True)
class RScript:
    """A script's text with its parsed header and the sha256 (hex) of the text in UTF-8."""

    header: ScriptHeader
    text: str
    sha256: str
    path: Path | None = None  # the file it was read from, None when built from text

    @property
    def name(self) -> str:
        """The script's name from its header."""
        return self.header.name

    @classmethod
    def from_text(cls, text: str, *, source: str, path: Path | None = None) -> RScript:
        """Parse ``text`` into an RScript; ``source`` names it in errors.

        Raises ``HeaderError`` for a bad header or a text over ``MAX_SCRIPT_BYTES``.
        """
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            line = text[: exc.start].count("\n") + 1
            raise HeaderError(source, line, "not UTF-8 text (a lone surrogate)") from None
        if len(data) > MAX_SCRIPT_BYTES:
            raise HeaderError(
                source,
                1,
                f"script is {len(data)} bytes, over the {MAX_SCRIPT_BYTES}-byte limit for an RScript",
            )
        header = parse_header(text, source=source)
        return cls(header=header, text=text, sha256=hashlib.sha256(data).hexdigest(), path=path)


def read_script(path: str | os.PathLike[str]) -> RScript:
    """Read and parse one script file.

    Raises ``HeaderError`` for a bad header, text that is not UTF-8 or too big, and
    ``RScriptError`` when the file can't be read or its name differs from the header's.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RScriptError(f"{path}: can't read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise HeaderError(str(path), line, "not UTF-8 text") from None
    script = RScript.from_text(text, source=str(path), path=path)
    if path.stem != script.name:
        raise RScriptError(
            f"{path}: header name {script.name!r} does not match the file name "
            f"(rename the file to {script.name}{path.suffix} or the header name to {path.stem!r})"
        )
    return script


def _read_directory(directory: Path) -> tuple[list[RScript], list[str]]:
    """The scripts in one directory, and one line per problem found."""
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        return [], [f"{directory}: RScript directory {problem}"]
    scripts: dict[str, RScript] = {}
    errors: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix not in _SUFFIXES or not path.is_file():
            continue
        try:
            script = read_script(path)
        except RScriptError as exc:
            errors.append(str(exc))
            continue
        first = scripts.get(script.name)
        if first is not None:
            errors.append(f"{path}: RScript {script.name!r} is already defined by {first.path}")
            continue
        scripts[script.name] = script
    return list(scripts.values()), errors


class ScriptLibrary:
    """RScripts by name; ``errors`` lists what was skipped and why.

    Built from directories once; ``add`` registers scripts that arrive later (the engine
    adds the scripts that come with a submitted workflow definition, under names of their
    own, so they never replace a library script).
    """

    def __init__(self, scripts: Iterable[RScript] = (), *, errors: Iterable[str] = ()) -> None:
        """Keep ``scripts``; a later script overrides an earlier one of the same name."""
        self._scripts = {script.name: script for script in scripts}
        self.errors: tuple[str, ...] = tuple(errors)

    @classmethod
    def scan(
        cls, directories: Iterable[str | os.PathLike[str]] = (), *, shipped: bool = True
    ) -> ScriptLibrary:
        """Read the shipped scripts (unless ``shipped=False``), then each directory in order.

        Never raises for a bad file or a missing directory: it is skipped and reported in
        ``errors``, one line each.
        """
        paths = [SHIPPED_DIR] if shipped else []
        paths += [Path(d).expanduser() for d in directories]
        scripts: list[RScript] = []
        errors: list[str] = []
        for path in paths:
            found, problems = _read_directory(path)
            scripts += found
            errors += problems
        return cls(scripts, errors=errors)

    @classmethod
    def load(
        cls, directories: Iterable[str | os.PathLike[str]] = (), *, shipped: bool = True
    ) -> ScriptLibrary:
        """Like ``scan``, but raise ``LibraryError`` (first problem, and how many more) if any."""
        library = cls.scan(directories, shipped=shipped)
        if library.errors:
            raise LibraryError(library.errors)
        return library

    def add(self, script: RScript, *, name: str | None = None) -> None:
        """Hold ``script`` under ``name`` (default: its header name), replacing any script
        already held under that name."""
        self._scripts[name or script.name] = script

    def get(self, name: str) -> RScript:
        """The script called ``name``; raises ``UnknownRScript`` naming the known ones."""
        try:
            return self._scripts[name]
        except KeyError:
            raise UnknownRScript(name, self.names()) from None

    def names(self) -> tuple[str, ...]:
        """The names of all scripts, sorted."""
        return tuple(sorted(self._scripts))

    def __contains__(self, name: object) -> bool:
        return name in self._scripts

    def __iter__(self) -> Iterator[RScript]:
        return (self._scripts[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._scripts)

    def __repr__(self) -> str:
        return f"<ScriptLibrary {len(self)} scripts, {len(self.errors)} errors>"
