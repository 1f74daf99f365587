"""The RScript header parser: the format, every error message, and round-trip properties."""

from __future__ import annotations

import types

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from wfe.rscripts import (
    MISSING,
    HeaderError,
    ParamSpec,
    ParamType,
    Requirements,
    ScriptHeader,
    format_header,
    parse_header,
)
from wfe.rscripts.header import format_size, parse_size

CHECKSUM = """\
#!/bin/sh
# wfe-rscript: 1
# name: checksum
# version: 1.0
# interpreter: sh
# description: sha256 and size of a file
# timeout: 60
# memory: 256M
# param path: str (required) the file to checksum
# param algorithm: str = "sha256" one of sha256, md5
# requires: cpus=1 memory=64M tags=linux

# not part of the header: timeout: 5
echo hello
"""

HEAD = "# wfe-rscript: 1\n# name: x\n# version: 1\n# interpreter: sh\n"


def test_parses_the_documented_example() -> None:
    """Every key of the example lands in the ScriptHeader; the header ends at the blank line."""
    header = parse_header(CHECKSUM, source="checksum.sh")
    assert header == ScriptHeader(
        name="checksum",
        version="1.0",
        interpreter="sh",
        description="sha256 and size of a file",
        timeout=60.0,
        memory=256 * 2**20,
        params=(
            ParamSpec(
                name="path", type=ParamType.STR, required=True, description="the file to checksum"
            ),
            ParamSpec(
                name="algorithm",
                type=ParamType.STR,
                default="sha256",
                description="one of sha256, md5",
            ),
        ),
        requires=Requirements(cpus=1, memory=64 * 2**20, tags=("linux",)),
    )


def test_defaults_of_optional_keys() -> None:
    """Without optional keys: no description, a one-hour timeout, no memory limit, one cpu."""
    header = parse_header(HEAD, source="x.sh")
    assert (header.description, header.timeout, header.memory) == ("", 3600.0, None)
    assert header.declared_timeout is None
    assert header.params == ()
    assert header.requires == Requirements(cpus=1, memory=None, tags=(), site=None)


def test_a_declared_timeout_is_told_from_the_default() -> None:
    """A ``# timeout:`` line is declared even when it equals the default; none is not."""
    declared = parse_header(HEAD + "# timeout: 1h\n", source="x.sh")
    assert (declared.timeout, declared.declared_timeout) == (3600.0, 3600.0)
    assert "# timeout:" not in format_header(parse_header(HEAD, source="x.sh"))
    assert ScriptHeader(name="n", version="1", interpreter="sh", timeout=5).timeout == 5


def test_python_style_header_with_crlf_and_no_shebang() -> None:
    """A header works without a shebang and with CRLF line ends."""
    text = HEAD.replace("sh\n", "python3\n").replace("\n", "\r\n") + '"""doc"""\r\n'
    assert parse_header(text, source="x.py").interpreter == "python3"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("# timeout: 90", 90.0),
        ("# timeout: 1.5", 1.5),
        ("# timeout: 2m", 120.0),
        ("# timeout: 1.5h", 5400.0),
        ("# timeout: 1d", 86400.0),
        ("# timeout: 2e1 s", 20.0),
    ],
)
def test_timeout_units(line: str, expected: float) -> None:
    """A timeout is seconds, or a number with an s, m, h or d unit."""
    assert parse_header(HEAD + line, source="x.sh").timeout == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("512", 512), ("4K", 4096), ("256M", 256 << 20), ("2g", 2 << 30)]
    + [("1T", 1 << 40), ("3MiB", 3 << 20), ("3MB", 3 << 20), (" 8 G ", 8 << 30)],
)
def test_sizes(text: str, expected: int) -> None:
    """Sizes are bytes with an optional binary K/M/G/T suffix."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "0M", "-1", "1.5G", "12X", "M", "1 2", "١٢"])
def test_bad_sizes(text: str) -> None:
    """Anything but a positive integer with an optional suffix is refused."""
    with pytest.raises(ValueError, match="expected a size in bytes"):
        parse_size(text)


@given(st.integers(1, 2**60))
def test_format_size_round_trips(size: int) -> None:
    """format_size gives text that parse_size reads back exactly."""
    assert parse_size(format_size(size)) == size


def test_requires_parses_every_key() -> None:
    """requires takes cpus, memory, comma-separated tags (kept sorted, unique) and site."""
    text = HEAD + "# requires: site=cern tags=linux,gpu,linux cpus=4 memory=2G"
    header = parse_header(text, source="x.sh")
    assert header.requires == Requirements(
        cpus=4, memory=2 << 30, tags=("gpu", "linux"), site="cern"
    )


ERRORS = [
    # (text, line, message)
    ("", 1, "not an RScript: the header must start with '# wfe-rscript: 1'"),
    ("#!/bin/sh\necho hi\n", 2, "not an RScript: the header must start with '# wfe-rscript: 1'"),
    ("# name: x\n", 1, "not an RScript: the header must start with '# wfe-rscript: 1'"),
    ("# wfe-rscript: 2\n", 1, "unsupported header format '2' (this wfe reads '# wfe-rscript: 1')"),
    (
        HEAD + "# timout: 5\n",
        5,
        "unknown header key 'timout' (known: description, interpreter, memory, name, param, "
        "requires, timeout, version)",
    ),
    (HEAD + "# timeout: -5\n", 5, "timeout must be a positive number of seconds"),
    (HEAD + "# timeout: 0\n", 5, "timeout must be a positive number of seconds"),
    (HEAD + "# timeout: soon\n", 5, "timeout must be a positive number of seconds"),
    (HEAD + "# timeout: 1e999\n", 5, "timeout must be a positive number of seconds"),
    (
        "# wfe-rscript: 1\n# version: 1\n# interpreter: sh\n\n# name: x\n",
        4,
        "header ends without 'name': add a '# name: ...' line",
    ),
    ("# wfe-rscript: 1\n# name: x\n# interpreter: sh\n", 4, "header ends without 'version'"),
    ("# wfe-rscript: 1\n# name: x\n# version: 1\n", 4, "header ends without 'interpreter'"),
    (HEAD + "# timeout: 5\n# timeout: 6\n", 6, "duplicate key 'timeout' (first on line 5)"),
    (HEAD + "# wfe-rscript: 1\n", 5, "duplicate key 'wfe-rscript' (first on line 1)"),
    (HEAD.replace("sh\n", "perl\n"), 4, "unknown interpreter 'perl' (known: bash, python3, sh)"),
    (
        HEAD + "# param n: integer\n",
        5,
        "parameter 'n': unknown type 'integer' (known: str, int, float, bool, path, list, dict)",
    ),
    (HEAD + "# param n: int = five\n", 5, "parameter 'n': can't parse default 'five' as JSON"),
    (
        HEAD + "# param s: str = abc the text\n",
        5,
        "parameter 's': can't parse default 'abc' as JSON (quote strings: = \"text\")",
    ),
    (HEAD + "# param n: int = NaN\n", 5, "parameter 'n': can't parse default 'NaN' as JSON"),
    (HEAD + "# param n: int = 1.5\n", 5, "parameter 'n': default must be int, got float"),
    (HEAD + "# param n: float = 1e999\n", 5, "parameter 'n': default must be a finite number"),
    (HEAD + "# param n: int = 5seconds\n", 5, "parameter 'n': put a space before the description"),
    (HEAD + "# param n: int (required)x\n", 5, "parameter 'n': put a space before the description"),
    (
        HEAD + "# param n: int (required) = 5\n",
        5,
        "parameter 'n' can't be both required and have a default",
    ),
    (HEAD + "# param n: int\n# param n: str\n", 6, "duplicate parameter 'n' (first on line 5)"),
    (HEAD + "# param 9n: int\n", 5, "bad parameter name '9n'"),
    (HEAD + "# param: int\n", 5, "param needs a name"),
    (HEAD + "# timeout 5: x\n", 5, "key 'timeout' takes no argument"),
    (
        HEAD + "# memory: lots\n",
        5,
        "memory: expected a size in bytes such as 512M or 2G, got 'lots'",
    ),
    (HEAD + "# memory:\n", 5, "key 'memory' has an empty value"),
    (HEAD + "# requires: cpus=0\n", 5, "requires: cpus must be a positive integer, got '0'"),
    (
        HEAD + "# requires: gpus=1\n",
        5,
        "requires: unknown key 'gpus' (known: cpus, memory, site, tags)",
    ),
    (HEAD + "# requires: cpus\n", 5, "requires: expected key=value, got 'cpus'"),
    (HEAD + "# requires: cpus=1 cpus=2\n", 5, "requires: duplicate key 'cpus'"),
    (HEAD + "# requires: tags=a,,b\n", 5, "requires: bad tag ''"),
    (HEAD + "# requires: memory=1Q\n", 5, "requires: memory: expected a size in bytes"),
    (HEAD + "# requires: site=a/b\n", 5, "requires: bad site 'a/b'"),
    (HEAD.replace("name: x", "name: Bad Name"), 2, "bad name 'Bad Name'"),
    (HEAD.replace("version: 1", "version: 1 beta"), 3, "bad version '1 beta'"),
]


@pytest.mark.parametrize(("text", "line", "message"), ERRORS)
def test_error_messages(text: str, line: int, message: str) -> None:
    """Each bad header gets one line naming the source, the line number and the problem."""
    with pytest.raises(HeaderError) as info:
        parse_header(text, source="checksum.sh")
    text_of_error = str(info.value)
    assert text_of_error.startswith(f"checksum.sh:{line}: {message}")
    assert "\n" not in text_of_error
    assert (info.value.source, info.value.line) == ("checksum.sh", line)
    assert isinstance(info.value, ValueError)


def test_header_ends_at_first_non_key_line() -> None:
    """Key lines after a blank line, a bare '#' or prose are not header: they are ignored."""
    for gap in ["", "#", "# some prose without a colon", "echo hi"]:
        text = f"{HEAD}{gap}\n# timeout: 5\n# bogus: 1\n"
        assert parse_header(text, source="x.sh").timeout == 3600.0


def test_param_forms() -> None:
    """A param is required, has a JSON default (null allowed), or is optional without one."""
    text = (
        HEAD
        + "# param a: int (required)\n"
        + "# param b: float = 2 two\n"
        + '# param c: dict = {"k": [1, "v w"]}   spaced text\n'
        + "# param d: path\n"
        + "# param e: bool = null maybe\n"
        + "# param f: list = [] (in order) items\n"
    )
    a, b, c, d, e, f = parse_header(text, source="x.sh").params
    assert a == ParamSpec(name="a", type=ParamType.INT, required=True)
    assert b == ParamSpec(name="b", type=ParamType.FLOAT, default=2.0, description="two")
    assert isinstance(b.default, float)
    assert c.default == {"k": [1, "v w"]} and c.description == "spaced text"
    assert d == ParamSpec(name="d", type=ParamType.PATH, default=MISSING)
    assert e.default is None and e.description == "maybe"
    assert f.default == [] and f.description == "(in order) items"


@given(header=st.data())
def test_round_trip(hdr: types.SimpleNamespace, header: st.DataObject) -> None:
    """A valid header, rendered by format_header, parses back to the same ScriptHeader."""
    original = header.draw(hdr.header)
    text = format_header(original) + "\nexec true\n"
    assert parse_header(text, source="gen.sh") == original
    assert parse_header(format_header(original, shebang=False), source="gen.sh") == original


_FRAGMENTS = st.sampled_from(
    ["name", "version", "interpreter", "timeout", "memory", "requires", "description"]
    + ["param x", "param", "wfe-rscript", "bogus", "param x y"]
)
_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["sh", "1", "60", "2m", "1e400", "256M", "0", "-1", "cpus=2 tags=a"]),
    st.sampled_from(["int = 5", 'str = "a" b', "float = [[[", "list = [" * 2000, "int (required)"]),
    st.sampled_from(['dict = {"a": NaN}', "int = 1" + "0" * 5000, "float = 1" + "0" * 400]),
)
_LINES = st.one_of(
    st.builds(lambda k, v: f"# {k}: {v}", _FRAGMENTS, _VALUES),
    st.text(max_size=40),
)


@given(st.text() | st.builds(lambda ls: "# wfe-rscript: 1\n" + "\n".join(ls), st.lists(_LINES)))
@example(
    "# wfe-rscript: 1\n# name: x\n# version: 1\n# interpreter: sh\n# param x: list = " + "[" * 5000
)
def test_arbitrary_text_raises_only_header_error(text: str) -> None:
    """Any text either parses or raises HeaderError with a one-line message, nothing else."""
    try:
        header = parse_header(text, source="any")
    except HeaderError as exc:
        assert str(exc).startswith(f"any:{exc.line}: ")
        assert "\n" not in str(exc)
    else:
        assert parse_header(format_header(header), source="again") == header
