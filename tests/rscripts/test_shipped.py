"""Every shipped RScript, run for real as a child process with WFE_PARAMS and WFE_RESULT."""

from __future__ import annotations

import hashlib
import json
import platform
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wfe.rscripts import ParamError, RScript, ScriptLibrary, validate_params

LIBRARY = ScriptLibrary.load()
TESTED = {"noop", "sleep_echo", "hostinfo", "checksum", "fail", "bigoutput", "write_product"}
Run = Callable[..., Any]


def script(name: str) -> RScript:
    return LIBRARY.get(name)


def test_every_shipped_script_is_tested_here() -> None:
    """A new shipped script must get a test in this file."""
    assert set(LIBRARY.names()) == TESTED


def test_noop(run: Run) -> None:
    """noop exits 0 at once, prints nothing and writes the empty result."""
    out = run(script("noop"), {})
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")
    assert out.result == {"results": {}, "metrics": {}, "products": []}


@pytest.mark.parametrize("via", ["both", "file", "stdin"])
def test_sleep_echo(run: Run, via: str) -> None:
    """sleep_echo prints the message `lines` times, exits with exit_code, echoes the params."""
    params = {"message": "hello world", "lines": 3, "exit_code": 7, "seconds": 0.01}
    out = run(script("sleep_echo"), params, via=via)
    assert (out.returncode, out.stdout, out.stderr) == (7, b"hello world\n" * 3, b"")
    assert out.result["results"] == {**params, "seconds": 0.01}


def test_sleep_echo_defaults(run: Run) -> None:
    """With no params: one empty line, exit 0, no sleep."""
    out = run(script("sleep_echo"), {})
    assert (out.returncode, out.stdout) == (0, b"\n")
    assert out.result["results"] == {"message": "", "lines": 1, "seconds": 0.0, "exit_code": 0}


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"lines": "3"}, b"sleep_echo: parameter 'lines' must be a non-negative int, got \"3\"\n"),
        ({"exit_code": 300}, b"sleep_echo: parameter 'exit_code' must be 0-255, got 300\n"),
        (
            {"seconds": -1},
            b"sleep_echo: parameter 'seconds' must be a non-negative number, got -1\n",
        ),
        ({"message": 5}, b"sleep_echo: parameter 'message' must be str, got 5\n"),
    ],
)
def test_sleep_echo_bad_params(run: Run, params: dict[str, Any], error: bytes) -> None:
    """Unvalidated bad params make sleep_echo exit 2 with one line on stderr, and no result."""
    out = run(script("sleep_echo"), params, validate=False)
    assert (out.returncode, out.stderr, out.result) == (2, error, None)


_MESSAGES = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"))
_FORMATS = st.sampled_from(
    [{}, {"indent": 2}, {"ensure_ascii": False}, {"separators": (",", ":")}, {"sort_keys": True}]
)


@settings(max_examples=40, deadline=None)
@given(message=_MESSAGES, lines=st.integers(0, 3), fmt=_FORMATS, data=st.data())
def test_sleep_echo_reads_any_message_as_data(
    run_in: Run, message: str, lines: int, fmt: dict[str, Any], data: st.DataObject
) -> None:
    """Whatever the message (quotes, backslashes, key look-alikes, non-ASCII, newlines) and
    however the params JSON is laid out, sleep_echo prints it exactly and echoes it back."""
    decoy = data.draw(st.sampled_from(["", '"lines": 9, ', '\\"lines\\": 9', '"lines"']))
    message = data.draw(st.sampled_from([message, decoy + message, message + decoy]))
    params = {"message": message, "lines": lines, "exit_code": 0, "seconds": 0.0}
    order = data.draw(st.permutations(list(params)))
    text = json.dumps({k: params[k] for k in order}, **fmt)
    sleep_echo = script("sleep_echo")
    out = run_in(sleep_echo, {}, validate=False, raw_params=text)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (message + "\n").encode() * lines
    assert out.result["results"]["message"] == message
    assert out.result["results"]["lines"] == lines


def test_hostinfo(run: Run) -> None:
    """hostinfo reports the host's name, cpus, memory, load, python and free disk."""
    out = run(script("hostinfo"), {})
    assert out.returncode == 0, out.stderr
    results = out.result["results"]
    assert results["hostname"] == socket.gethostname()
    assert results["python"] == platform.python_version()
    assert results["cpus"] >= 1 and results["cpus_usable"] >= 1
    assert results["memory_total"] >= results["memory_available"] > 0
    assert len(results["load"]) == 3
    assert results["disk_total"] >= results["disk_free"] > 0
    assert Path(results["cwd"]) == out.workdir


def test_checksum(run: Run, tmp_path: Path) -> None:
    """checksum reports size and digest, and the file as a product with its sha256."""
    data = b"wfe checksum test\n" * 1000
    target = tmp_path / "data.bin"
    target.write_bytes(data)
    out = run(script("checksum"), {"path": str(target), "algorithm": "md5", "type": "qa"})
    assert out.returncode == 0, out.stderr
    md5 = hashlib.md5(data).hexdigest()
    assert out.stdout == f"{md5}  {target}\n".encode()
    assert out.result["results"] == {
        "path": str(target),
        "size": len(data),
        "algorithm": "md5",
        "digest": md5,
    }
    assert out.result["products"] == [
        {
            "path": str(target),
            "type": "qa",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "metadata": {},
        }
    ]


def test_checksum_missing_file(run: Run, tmp_path: Path) -> None:
    """A file that is not there: exit 2, one line on stderr, no result."""
    out = run(script("checksum"), {"path": str(tmp_path / "nope")})
    assert out.returncode == 2
    assert (
        out.stderr
        == f"checksum: can't read {tmp_path / 'nope'}: No such file or directory\n".encode()
    )
    assert out.result is None


def test_checksum_requires_path() -> None:
    """The engine refuses checksum without a path before anything runs."""
    with pytest.raises(ParamError, match="^checksum: parameter 'path' is required$"):
        validate_params(script("checksum").header, {})


def test_fail(run: Run) -> None:
    """fail writes its message to stderr (after optional stdout) and exits with the code."""
    out = run(script("fail"), {"exit_code": 3, "message": "boom", "stdout": "before"})
    assert (out.returncode, out.stdout, out.stderr, out.result) == (3, b"before\n", b"boom\n", None)
    assert run(script("fail"), {}).returncode == 1


def expected_output(size: int, line_length: int = 100) -> bytes:
    """The bytes bigoutput documents: numbered lines of one repeated letter, cut at size."""
    out = bytearray()
    k = 0
    while len(out) < size:
        out += f"{k:09d} {chr(ord('a') + k % 26) * (line_length - 11)}\n".encode()
        k += 1
    return bytes(out[:size])


@pytest.mark.parametrize(
    ("size", "stream"), [(0, "stdout"), (1_000_003, "stdout"), (250, "stderr")]
)
def test_bigoutput(run: Run, size: int, stream: str) -> None:
    """bigoutput writes exactly the documented bytes and reports their size and sha256."""
    out = run(script("bigoutput"), {"size": size, "stream": stream})
    assert out.returncode == 0, out.stderr
    written = out.stdout if stream == "stdout" else out.stderr
    assert written == expected_output(size)
    assert (out.stderr if stream == "stdout" else out.stdout) == b""
    assert out.result["results"] == {
        "bytes": size,
        "stream": stream,
        "sha256": hashlib.sha256(written).hexdigest(),
    }


def test_bigoutput_line_length(run: Run) -> None:
    """line_length sets the bytes per line, newline included."""
    out = run(script("bigoutput"), {"size": 40, "line_length": 20})
    assert out.stdout == expected_output(40, 20)
    assert out.stdout.split(b"\n")[0] == b"000000000 aaaaaaaaa"


def test_write_product_content(run: Run) -> None:
    """write_product writes the content in the working directory and reports the product."""
    out = run(script("write_product"), {"content": "héllo\n", "type": "log", "metadata": {"k": 1}})
    assert out.returncode == 0, out.stderr
    data = "héllo\n".encode()
    assert (out.workdir / "product.dat").read_bytes() == data
    assert out.result["products"] == [
        {
            "path": "product.dat",
            "type": "log",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "metadata": {"k": 1},
        }
    ]


def test_write_product_size_in_output_dir(run: Run, tmp_path: Path) -> None:
    """With size and output_dir: that many pattern bytes at an absolute path under the dir."""
    out = run(
        script("write_product"),
        {"size": 70_000, "output_dir": str(tmp_path / "out"), "name": "sub/p.bin"},
    )
    assert out.returncode == 0, out.stderr
    target = tmp_path / "out" / "sub" / "p.bin"
    data = target.read_bytes()
    assert data == (bytes(range(256)) * 274)[:70_000]
    (product,) = out.result["products"]
    assert product["path"] == str(target)
    assert (product["size"], product["sha256"]) == (70_000, hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"content": "x", "name": "../x"}, "parameter 'name' must be a relative path without '..'"),
        ({"content": "x", "size": 3}, "give exactly one of the parameters 'content' and 'size'"),
        ({}, "give exactly one of the parameters 'content' and 'size'"),
        ({"content": "x", "type": "data"}, "unknown product type 'data'"),
    ],
)
def test_write_product_refuses(run: Run, params: dict[str, Any], error: str) -> None:
    """Bad params: exit 2 with one line on stderr naming the rule, and no result."""
    out = run(script("write_product"), params)
    assert out.returncode == 2
    assert out.stderr.decode().startswith(f"write_product: {error}")
    assert out.result is None
