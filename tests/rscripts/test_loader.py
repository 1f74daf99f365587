"""ScriptLibrary: shipped scripts, user overrides by name, and one-line errors for bad files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from wfe.rscripts import (
    MAX_SCRIPT_BYTES,
    SHIPPED_DIR,
    HeaderError,
    LibraryError,
    RScript,
    RScriptError,
    ScriptLibrary,
    UnknownRScript,
    read_script,
)

SHIPPED = ("bigoutput", "checksum", "fail", "hostinfo", "noop", "sleep_echo", "write_product")


def script_text(name: str, version: str = "1.0", interpreter: str = "sh") -> str:
    return (
        f"#!/bin/sh\n# wfe-rscript: 1\n# name: {name}\n# version: {version}\n"
        f"# interpreter: {interpreter}\n\necho {name}\n"
    )


def test_shipped_scripts_load_cleanly() -> None:
    """The shipped directory holds exactly the documented scripts, all valid."""
    library = ScriptLibrary.load()
    assert library.names() == SHIPPED
    assert library.errors == ()
    assert all(s.path is not None and s.path.parent == SHIPPED_DIR for s in library)


def test_rscript_records_text_and_sha256() -> None:
    """An RScript keeps the exact text and the sha256 of its UTF-8 bytes."""
    script = ScriptLibrary.load().get("noop")
    assert script.path is not None
    assert script.text == script.path.read_text(encoding="utf-8")
    assert script.sha256 == hashlib.sha256(script.path.read_bytes()).hexdigest()
    assert script.name == script.header.name == "noop"


def test_user_directory_overrides_by_name(tmp_path: Path) -> None:
    """A user script with a shipped name replaces it; later directories win over earlier."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "noop.sh").write_text(script_text("noop", "2.0"), encoding="utf-8")
    (first / "mine.sh").write_text(script_text("mine", "1.0"), encoding="utf-8")
    (second / "mine.sh").write_text(script_text("mine", "9.0"), encoding="utf-8")
    library = ScriptLibrary.load([first, str(second)])
    assert library.get("noop").header.version == "2.0"
    assert library.get("noop").path == first / "noop.sh"
    assert library.get("mine").header.version == "9.0"
    assert library.get("checksum").path == SHIPPED_DIR / "checksum.py"
    assert "mine" in library and len(library) == len(SHIPPED) + 1


def test_shipped_can_be_left_out(tmp_path: Path) -> None:
    """shipped=False gives only the user's scripts."""
    (tmp_path / "mine.sh").write_text(script_text("mine"), encoding="utf-8")
    assert ScriptLibrary.load([tmp_path], shipped=False).names() == ("mine",)


def test_unknown_name_lists_known_ones(tmp_path: Path) -> None:
    """get() of an unknown name raises UnknownRScript (a LookupError) naming the known ones."""
    (tmp_path / "a.sh").write_text(script_text("a"), encoding="utf-8")
    (tmp_path / "b.sh").write_text(script_text("b"), encoding="utf-8")
    library = ScriptLibrary.load([tmp_path], shipped=False)
    with pytest.raises(UnknownRScript) as info:
        library.get("x")
    assert str(info.value) == "unknown RScript 'x' (known: a, b)"
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownRScript, match=r"^unknown RScript 'x' \(known: none\)$"):
        ScriptLibrary().get("x")


def test_bad_files_are_all_reported(tmp_path: Path) -> None:
    """scan() keeps the good scripts and reports every bad file in one line each; load()
    raises one error with the first problem and how many more there are."""
    (tmp_path / "good.sh").write_text(script_text("good"), encoding="utf-8")
    (tmp_path / "bad1.sh").write_text(
        script_text("bad1").replace("# interpreter: sh\n", "# interpreter: sh\n# timout: 5\n"),
        encoding="utf-8",
    )
    (tmp_path / "bad2.py").write_text("print('no header')\n", encoding="utf-8")
    (tmp_path / "bad3.sh").write_bytes(b"# wfe-rscript: 1\n# name: \xff\n")
    (tmp_path / "README.md").write_text("not a script", encoding="utf-8")
    (tmp_path / ".hidden.sh").write_text("junk", encoding="utf-8")
    library = ScriptLibrary.scan([tmp_path], shipped=False)
    assert library.names() == ("good",)
    assert library.errors == (
        f"{tmp_path / 'bad1.sh'}:6: unknown header key 'timout' (known: description, "
        "interpreter, memory, name, param, requires, timeout, version)",
        f"{tmp_path / 'bad2.py'}:1: not an RScript: the header must start with '# wfe-rscript: 1'",
        f"{tmp_path / 'bad3.sh'}:2: not UTF-8 text",
    )
    with pytest.raises(LibraryError) as info:
        ScriptLibrary.load([tmp_path], shipped=False)
    assert str(info.value) == f"{library.errors[0]} (and 2 more problems)"
    assert info.value.errors == library.errors


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    """A directory that does not exist, or is a file, is reported, not silently skipped."""
    (tmp_path / "file").write_text("", encoding="utf-8")
    library = ScriptLibrary.scan([tmp_path / "nope", tmp_path / "file"])
    assert library.errors == (
        f"{tmp_path / 'nope'}: RScript directory does not exist",
        f"{tmp_path / 'file'}: RScript directory is not a directory",
    )
    assert library.names() == SHIPPED
    with pytest.raises(LibraryError, match=r"does not exist \(and 1 more problem\)$"):
        ScriptLibrary.load([tmp_path / "nope", tmp_path / "file"])


def test_file_name_must_match_header_name(tmp_path: Path) -> None:
    """A script's file name without suffix must be its header name."""
    (tmp_path / "foo.sh").write_text(script_text("bar"), encoding="utf-8")
    with pytest.raises(RScriptError) as info:
        read_script(tmp_path / "foo.sh")
    assert str(info.value) == (
        f"{tmp_path / 'foo.sh'}: header name 'bar' does not match the file name "
        "(rename the file to bar.sh or the header name to 'foo')"
    )


def test_same_name_twice_in_one_directory(tmp_path: Path) -> None:
    """Two files of one name in one directory: the first (sorted) is kept, the second reported."""
    (tmp_path / "dup.sh").write_text(script_text("dup"), encoding="utf-8")
    (tmp_path / "dup.py").write_text(script_text("dup", interpreter="python3"), encoding="utf-8")
    library = ScriptLibrary.scan([tmp_path], shipped=False)
    assert library.get("dup").header.interpreter == "python3"
    assert library.errors == (
        f"{tmp_path / 'dup.sh'}: RScript 'dup' is already defined by {tmp_path / 'dup.py'}",
    )


def test_oversized_script_is_refused(tmp_path: Path) -> None:
    """A script over MAX_SCRIPT_BYTES is refused: it could not travel in one message."""
    text = script_text("big") + "#" * MAX_SCRIPT_BYTES
    with pytest.raises(HeaderError, match=rf"^x:1: script is {len(text)} bytes, over the"):
        RScript.from_text(text, source="x")


def test_unreadable_file(tmp_path: Path) -> None:
    """A path that can't be read gives one line naming it."""
    with pytest.raises(RScriptError, match=r"nothing\.sh: can't read: No such file"):
        read_script(tmp_path / "nothing.sh")


def test_from_text_without_path() -> None:
    """An RScript can be built from text alone (as an agent does with a Dispatch)."""
    script = RScript.from_text(script_text("t"), source="dispatch")
    assert (script.name, script.path) == ("t", None)
    assert script.sha256 == hashlib.sha256(script_text("t").encode()).hexdigest()
