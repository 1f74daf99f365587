"""Encoding and decoding of protocol messages."""

from __future__ import annotations

import json
import types
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.protocols.codec import decode, encode, structure, unstructure
from wfe.protocols.errors import DecodeError
from wfe.protocols.messages import (
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Cancel,
    Dispatch,
    Limits,
)

GOOD: dict[str, Any] = {
    "v": 1,
    "type": "dispatch",
    "job_id": "j1",
    "attempt": 1,
    "script_name": "hello",
    "script": "echo hi\n",
    "sha256": "00",
    "params": {"n": 1},
    "limits": {"timeout": 60, "memory": None},
}


def decode_json(obj: Any) -> Any:
    return decode(json.dumps(obj).encode())


def test_every_message_type_has_a_strategy(msgs: types.SimpleNamespace) -> None:
    """The round-trip property below covers every type in MESSAGE_TYPES."""
    assert set(msgs.by_type) == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("name", sorted(MESSAGE_TYPES))
@given(data=st.data())
def test_round_trip(msgs: types.SimpleNamespace, name: str, data: st.DataObject) -> None:
    """decode(encode(m)) == m for every message of every type."""
    message = data.draw(msgs.by_type[MESSAGE_TYPES[name]])
    wire = encode(message)
    assert json.loads(wire)["type"] == name
    assert decode(wire) == message


@given(data=st.binary(max_size=200))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    """Arbitrary bytes either decode or raise DecodeError, never anything else."""
    try:
        decode(data)
    except DecodeError:
        pass


@given(data=st.data())
def test_random_json_raises_only_decode_error(
    msgs: types.SimpleNamespace, data: st.DataObject
) -> None:
    """Arbitrary JSON, with or without a valid envelope, raises only DecodeError."""
    obj = data.draw(msgs.json_value)
    if isinstance(obj, dict) and data.draw(st.booleans()):
        name = data.draw(st.sampled_from(sorted(MESSAGE_TYPES)))
        obj = {**obj, "v": PROTOCOL_VERSION, "type": name}
    try:
        message = decode_json(obj)
    except DecodeError:
        pass
    else:  # e.g. {"v": 1, "type": "status_request"} is a whole message
        assert decode(encode(message)) == message


@given(data=st.data())
def test_corrupting_one_field_raises_only_decode_error(
    msgs: types.SimpleNamespace, data: st.DataObject
) -> None:
    """A valid message with one field replaced or dropped is refused, or decodes to a valid one."""
    obj = unstructure(data.draw(msgs.message))
    fields = sorted(k for k in obj if k not in ("v", "type"))
    if not fields:
        return
    key = data.draw(st.sampled_from(fields))
    if data.draw(st.booleans()):
        obj[key] = data.draw(msgs.json_value)
    else:
        del obj[key]
    try:
        message = decode_json(obj)
    except DecodeError as exc:
        assert str(exc).startswith(f"{obj['type']}: $"), str(exc)
    else:
        assert decode(encode(message)) == message


def test_oversized_message_is_refused() -> None:
    """A message above MAX_MESSAGE_BYTES is refused before it is parsed."""
    data = b" " * (MAX_MESSAGE_BYTES + 1)
    with pytest.raises(DecodeError, match=f"exceeds the limit of {MAX_MESSAGE_BYTES}"):
        decode(data)
    with pytest.raises(DecodeError, match="exceeds the limit of 10"):
        decode(encode(Cancel(job_id="j1", attempt=1)), max_bytes=10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, r"$.v: unsupported protocol version 2 (this side speaks 1)"),
        ({"v": True}, r"$.v: unsupported protocol version True"),
        ({"v": "1"}, r"$.v: unsupported protocol version '1'"),
        ({"v": None}, r"$.v: unsupported protocol version None"),
        ({"type": "launch"}, r"$.type: unknown message type 'launch'"),
        ({"type": 3}, r"$.type: unknown message type 3"),
        ({"colour": "red"}, r"dispatch: $: unknown field(s) colour"),
        ({"job_id": 7}, r"dispatch: $.job_id: expected a string"),
        ({"job_id": None}, r"dispatch: $.job_id: expected a string"),
        ({"attempt": "1"}, r"dispatch: $.attempt: expected an integer"),
        ({"attempt": 1.0}, r"dispatch: $.attempt: expected an integer"),
        ({"attempt": True}, r"dispatch: $.attempt: expected an integer"),
        ({"params": []}, r"dispatch: $.params: expected an object"),
        ({"limits": "60"}, r"dispatch: $.limits: expected an object"),
        ({"limits": {"timeout": "60"}}, r"dispatch: $.limits.timeout: expected a number"),
        ({"limits": {"timeout": False}}, r"dispatch: $.limits.timeout: expected a number"),
        ({"limits": {}}, r"dispatch: $.limits.timeout: required field missing"),
        ({"limits": {"timeout": 1, "cpu": 2}}, r"dispatch: $.limits: unknown field(s) cpu"),
        (
            {"limits": {"timeout": 1, "memory": 1.5}},
            r"dispatch: $.limits.memory: expected an integer",
        ),
        ({"signature": 5}, r"dispatch: $.signature: expected a string"),
    ],
)
def test_bad_dispatch_names_the_path(change: dict[str, Any], message: str) -> None:
    """Each malformed field gives a DecodeError naming its path and what was expected."""
    with pytest.raises(DecodeError) as info:
        decode_json({**GOOD, **change})
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"v": 1, "type": "cancel", "attempt": 1}, "cancel: $.job_id: required field missing"),
        (
            {
                "v": 1,
                "type": "output",
                "job_id": "j",
                "attempt": 1,
                "stream": "stdin",
                "seq": 0,
                "data": "",
            },
            "output: $.stream: expected one of 'stdout', 'stderr'",
        ),
        (
            {
                "v": 1,
                "type": "output",
                "job_id": "j",
                "attempt": 1,
                "stream": "stdout",
                "seq": 0,
                "data": "@",
            },
            "output: $.data: invalid base64",
        ),
        (
            {
                "v": 1,
                "type": "output",
                "job_id": "j",
                "attempt": 1,
                "stream": "stdout",
                "seq": 0,
                "data": 3,
            },
            "output: $.data: expected a base64 string",
        ),
        (
            {"v": 1, "type": "status", "name": "a", "free_slots": 1, "running": "j1"},
            "status: $.running: expected an array",
        ),
        (
            {"v": 1, "type": "status", "name": "a", "free_slots": 1, "running": [{"job_id": "j"}]},
            "status: $.running[0].attempt: required field missing",
        ),
        (
            {"v": 1, "type": "status", "name": "a", "free_slots": 1, "held": [[1]]},
            "status: $.held[0]: expected an object",
        ),
        (
            {
                "v": 1,
                "type": "hello",
                "name": "a",
                "software": "1",
                "capabilities": {"slots": 1, "tags": "gpu"},
            },
            "hello: $.capabilities.tags: expected an array",
        ),
        (
            {
                "v": 1,
                "type": "hello",
                "name": "a",
                "software": "1",
                "capabilities": {"slots": 1, "tags": [1]},
            },
            "hello: $.capabilities.tags[0]: expected a string",
        ),
        (
            {
                "v": 1,
                "type": "finished",
                "job_id": "j",
                "attempt": 1,
                "reason": "exited",
                "result": [1],
            },
            "finished: $.result: expected an object",
        ),
    ],
)
def test_bad_fields_of_other_messages_name_the_path(obj: dict[str, Any], message: str) -> None:
    """Nested and list fields report the exact path of the first problem."""
    with pytest.raises(DecodeError) as info:
        decode_json(obj)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[]",
        b'"dispatch"',
        b"\xff\xfe\x00",
        b"[" * 100_000,
        b'{"v": 1, "type": "cancel", "job_id": "j", "attempt": 1' + b"0" * 5000 + b"}",
    ],
)
def test_bytes_that_are_not_a_json_object_are_refused(data: bytes) -> None:
    """Broken, deeply nested or absurd JSON is a DecodeError, not a crash."""
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(constant: str) -> None:
    """A NaN or infinite timeout never reaches an agent: it would never expire."""
    text = json.dumps(GOOD).replace('"timeout": 60', f'"timeout": {constant}')
    with pytest.raises(DecodeError):
        decode(text.encode())


def test_non_finite_numbers_are_not_encoded() -> None:
    """Encoding a message holding NaN raises ValueError naming the message type."""
    message = Dispatch(
        job_id="j1",
        attempt=1,
        script_name="s",
        script="",
        sha256="",
        params={},
        limits=Limits(timeout=float("inf")),
    )
    with pytest.raises(ValueError, match="^dispatch: cannot encode"):
        encode(message)


def test_structure_refuses_a_non_object() -> None:
    """structure() of an already parsed value that is not an object is a DecodeError."""
    with pytest.raises(DecodeError, match=r"^\$: expected a JSON object$"):
        structure(["dispatch"])
