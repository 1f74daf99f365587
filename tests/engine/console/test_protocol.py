"""The console protocol's pure parts: parsing requests, compact replies and pushes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.console import protocol

from .conftest import JSON


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_parsing_any_text_gives_a_request_or_a_bad_frame(text: str | bytes) -> None:
    """Whatever arrives, the parser returns a Request or raises BadFrame, nothing else."""
    try:
        request = protocol.parse_request(text, max_size=1000)
    except protocol.BadFrame as exc:
        assert exc.code in (protocol.BAD_REQUEST, protocol.TOO_LARGE)
        assert "\n" not in str(exc)
    else:
        assert isinstance(request.op, str) and isinstance(request.args, dict)


@given(
    st.one_of(st.none(), st.integers(min_value=-(2**52), max_value=2**52), st.text(max_size=64)),
    st.text(min_size=1, max_size=20),
    st.dictionaries(st.text(max_size=8), JSON, max_size=4),
)
def test_a_well_formed_request_round_trips(request_id: Any, op: str, args: dict[str, Any]) -> None:
    """An encoded request parses back to its id, op and args."""
    parsed = protocol.parse_request(
        json.dumps({"id": request_id, "op": op, "args": args}), max_size=10**6
    )
    assert (parsed.id, parsed.op, parsed.args) == (request_id, op, args)


def test_replies_and_pushes_are_compact_json() -> None:
    """Frames are one JSON object each, in the documented shapes."""
    assert json.loads(protocol.ok(1, {"a": 1})) == {"id": 1, "ok": True, "result": {"a": 1}}
    assert json.loads(protocol.error("x", "forbidden", "no")) == {
        "id": "x",
        "ok": False,
        "error": {"code": "forbidden", "message": "no"},
    }
    assert json.loads(protocol.push(3, end=True)) == {"stream": 3, "end": True}
