"""The XMPP payload: messages to stanza text and back, sizes, and refusal of bad payloads."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wfe.protocols import codec
from wfe.protocols.errors import DecodeError
from wfe.protocols.messages import (
    MAX_CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    Ack,
    Capabilities,
    Dispatch,
    Limits,
    OutputChunk,
    Stream,
)
from wfe.protocols.signing import script_sha256
from wfe.protocols.xmpp import (
    DEFAULT_MAX_STANZA,
    MAX_PARTS,
    MIN_MAX_STANZA,
    TAG,
    Fragment,
    PayloadAssembler,
    PayloadEncoder,
    PayloadTooLarge,
    PresenceInfo,
    bare_jid,
    error_stanza,
    is_bare_jid,
    parse_presence,
    payload_budget,
    presence_stanza,
)

TO = "engine@wfe.example.org/wfe & co"  # a resource may hold characters XML must escape
SCRIPT_MAX = 128 * 1024  # wfe.rscripts.loader.MAX_SCRIPT_BYTES


def payloads(stanzas: list[str]) -> list[ET.Element]:
    """Parse stanza texts as a receiver would and return their payload elements."""
    elements = []
    for text in stanzas:
        stanza = ET.fromstring(text)
        assert stanza.tag == "message" and stanza.get("type") == "normal"
        assert stanza.get("to") == TO
        assert stanza.find("body") is None
        element = stanza.find(TAG)
        assert element is not None
        elements.append(element)
    return elements


def deliver(stanzas: list[str], assembler: PayloadAssembler | None = None) -> Any:
    assembler = assembler or PayloadAssembler()
    results = [assembler.feed("agent@wfe.example.org/wfe", e) for e in payloads(stanzas)]
    assert all(r is None for r in results[:-1])
    return results[-1]


def element(text: str, **attributes: str) -> ET.Element:
    e = ET.Element(TAG, attributes)
    e.text = text
    return e


def dispatch(script: str) -> Dispatch:
    return Dispatch(
        job_id="job-1",
        attempt=1,
        script_name="big",
        script=script,
        sha256=script_sha256(script),
        params={"x": 1},
        limits=Limits(timeout=60.0),
        signature="c2lnbmF0dXJl",
        issued=1_700_000_000.0,
    )


@settings(max_examples=200)
@given(data=st.data(), max_stanza=st.sampled_from([MIN_MAX_STANZA, 64 * 1024, DEFAULT_MAX_STANZA]))
def test_every_message_round_trips_through_stanzas(
    msgs: types.SimpleNamespace, data: st.DataObject, max_stanza: int
) -> None:
    """Any message, encoded into stanzas for any server limit, parses back to an equal message."""
    message = data.draw(msgs.message)
    stanzas = PayloadEncoder(max_stanza=max_stanza).stanzas(TO, message)
    assert deliver(stanzas) == message
    for text in stanzas:
        assert len(text.encode()) <= max_stanza // 2


def test_a_full_output_chunk_goes_plain_in_one_stanza_under_the_default_limit() -> None:
    """64 KiB of incompressible output is one stanza of JSON text, under half of 256 KiB."""
    chunk = OutputChunk(
        job_id="job-1", attempt=1, stream=Stream.STDOUT, seq=7, data=os.urandom(MAX_CHUNK_BYTES)
    )
    (stanza,) = PayloadEncoder().stanzas(TO, chunk)
    (payload,) = payloads([stanza])
    assert payload.get("enc") is None
    assert codec.decode(payload.text.encode()) == chunk  # type: ignore[union-attr]
    assert len(stanza.encode()) < DEFAULT_MAX_STANZA // 2


def test_compressible_output_is_sent_compressed() -> None:
    """Output that compresses well travels as base64 zlib, much smaller than the plain JSON."""
    chunk = OutputChunk(
        job_id="job-1", attempt=1, stream=Stream.STDOUT, seq=0, data=b"line of log output\n" * 3000
    )
    (stanza,) = PayloadEncoder().stanzas(TO, chunk)
    assert payloads([stanza])[0].get("enc") == "zlib"
    assert len(stanza) < len(codec.encode(chunk)) // 4
    assert deliver([stanza]) == chunk


def test_the_largest_rscript_fits_one_stanza() -> None:
    """A dispatch of a 128 KiB shell script (typical text) is one compressed stanza."""
    line = 'echo "step $i of the calibration" >&2 && process --input "$WFE_PARAMS" <data\n'
    script = (line * (SCRIPT_MAX // len(line) + 1))[:SCRIPT_MAX]
    stanzas = PayloadEncoder().stanzas(TO, dispatch(script))
    assert len(stanzas) == 1
    assert deliver(stanzas) == dispatch(script)


def test_an_incompressible_dispatch_is_split_and_reassembled() -> None:
    """A dispatch whose JSON is near 1 MiB and incompressible goes in parts, each under the limit."""
    rng = __import__("random").Random(3)
    script = "".join(chr(rng.randrange(0x100, 0xD7FF)) for _ in range(SCRIPT_MAX))
    stanzas = PayloadEncoder().stanzas(TO, dispatch(script))
    assert 2 <= len(stanzas) <= MAX_PARTS
    elements = payloads(stanzas)
    assert [e.get("part") for e in elements] == [str(n) for n in range(1, len(stanzas) + 1)]
    assert {e.get("id") for e in elements} == {elements[0].get("id")}
    assert all(len(t.encode()) <= DEFAULT_MAX_STANZA // 2 for t in stanzas)
    assert deliver(stanzas) == dispatch(script)


def test_successive_multi_part_messages_get_distinct_ids() -> None:
    """Two big messages from one encoder never share a fragment id."""
    encoder = PayloadEncoder(max_stanza=MIN_MAX_STANZA)
    big = Ack(job_id=base64.b64encode(os.urandom(12_000)).decode(), attempt=1)
    first, second = (payloads(encoder.stanzas(TO, big)) for _ in range(2))
    assert first[0].get("id") != second[0].get("id")


def test_a_message_over_the_protocol_limit_cannot_be_sent() -> None:
    """Encoding a message of more than MAX_MESSAGE_BYTES raises PayloadTooLarge, naming the size."""
    with pytest.raises(PayloadTooLarge, match=f"exceeds the limit of {MAX_MESSAGE_BYTES}"):
        PayloadEncoder().stanzas(TO, Ack(job_id="x" * MAX_MESSAGE_BYTES, attempt=1))


def test_a_server_limit_below_the_minimum_is_refused() -> None:
    """payload_budget refuses a stanza limit too small to carry anything useful."""
    with pytest.raises(ValueError, match="at least 16384"):
        payload_budget(8 * 1024)


# --- refusal ------------------------------------------------------------------------------------


@given(text=st.text(max_size=300), enc=st.sampled_from([None, "zlib", "gzip"]))
def test_random_payload_text_raises_only_decode_error(text: str, enc: str | None) -> None:
    """Whatever the text of a payload, the assembler returns a message or raises DecodeError."""
    attributes = {"enc": enc} if enc else {}
    try:
        PayloadAssembler().feed("x", element(text, **attributes))
    except DecodeError:
        pass


@given(
    part=st.sampled_from(["0", "1", "2", "-1", "x", "", "99999999"]),
    parts=st.sampled_from(["0", "1", "2", str(MAX_PARTS + 1), "y", ""]),
    message_id=st.sampled_from(["", "m1"]),
)
def test_bad_fragment_numbers_are_refused(part: str, parts: str, message_id: str) -> None:
    """Fragment numbering outside 1 <= part <= parts <= MAX_PARTS, or no id, is a DecodeError."""
    assembler = PayloadAssembler()
    e = element("eJwDAAAAAAE=", enc="zlib", id=message_id, part=part, parts=parts)
    valid = (
        message_id
        and part.isdigit()
        and parts.isdigit()
        and 1 <= int(part) <= int(parts) <= MAX_PARTS
    )
    if valid:
        return  # well-formed numbering is covered by the round-trip tests
    with pytest.raises(DecodeError):
        assembler.feed("x", e)
    assert assembler.pending() == 0


@pytest.mark.parametrize(
    ("text", "attributes", "message"),
    [
        ("{not json", {}, "not valid JSON"),
        ('{"v":1,"type":"ack","job_id":"j"}', {}, r"ack: \$.attempt: required field missing"),
        ("!!!", {"enc": "zlib"}, "not valid base64"),
        (base64.b64encode(b"not zlib").decode(), {"enc": "zlib"}, "does not inflate"),
        (base64.b64encode(zlib.compress(b'{"v":1}')[:-3]).decode(), {"enc": "zlib"}, "truncated"),
        ("abc", {"enc": "gzip"}, "unknown payload encoding 'gzip'"),
        ("{}", {"id": "m1", "part": "1", "parts": "2"}, "must be enc='zlib'"),
    ],
)
def test_malformed_payloads_are_refused_with_one_line(
    text: str, attributes: dict[str, str], message: str
) -> None:
    """Each kind of malformed payload is a DecodeError whose one-line message names the problem."""
    with pytest.raises(DecodeError, match=message) as caught:
        PayloadAssembler().feed("x", element(text, **attributes))
    assert "\n" not in str(caught.value)


def test_a_compression_bomb_is_refused_without_inflating_it_all() -> None:
    """zlib data that inflates past MAX_MESSAGE_BYTES is refused as oversized."""
    bomb = base64.b64encode(zlib.compress(b" " * (64 * MAX_MESSAGE_BYTES), 9)).decode()
    assert len(bomb) < 200_000
    with pytest.raises(DecodeError, match="inflates beyond the limit"):
        PayloadAssembler().feed("x", element(bomb, enc="zlib"))


def test_oversized_plain_payload_is_refused() -> None:
    """Plain JSON text longer than the limit is refused before it is parsed."""
    with pytest.raises(DecodeError, match="exceeds the limit"):
        PayloadAssembler(max_bytes=1000).feed("x", element(" " * 1001))


def test_too_many_fragment_bytes_are_refused() -> None:
    """Fragments whose total text exceeds what MAX_MESSAGE_BYTES can encode to are refused."""
    assembler = PayloadAssembler(max_bytes=1000)
    piece = "A" * 1000
    assembler.feed("x", element(piece, enc="zlib", id="m1", part="1", parts="3"))
    with pytest.raises(DecodeError, match="exceeds the limit of 1000 bytes"):
        assembler.feed("x", element(piece, enc="zlib", id="m1", part="2", parts="3"))
    assert assembler.pending() == 0


def test_fragments_out_of_order_are_refused_and_dropped() -> None:
    """A fragment that does not continue the sender's unfinished message drops it."""
    stanzas = PayloadEncoder(max_stanza=MIN_MAX_STANZA).stanzas(
        TO, Ack(job_id=base64.b64encode(os.urandom(20_000)).decode(), attempt=1)
    )
    first, second, third, *_ = payloads(stanzas)
    assembler = PayloadAssembler()
    with pytest.raises(DecodeError, match="fragment 2/.* out of order"):
        assembler.feed("x", second)
    assert assembler.feed("x", first) is None
    with pytest.raises(DecodeError, match="fragment 3/.* out of order"):
        assembler.feed("x", third)
    assert assembler.pending() == 0 and assembler.dropped == 1


def test_a_new_message_drops_an_unfinished_one_and_senders_are_independent() -> None:
    """Unfinished messages are per sender; a sender starting anew drops its unfinished one."""
    big = Ack(job_id=base64.b64encode(os.urandom(20_000)).decode(), attempt=1)
    elements = payloads(PayloadEncoder(max_stanza=MIN_MAX_STANZA).stanzas(TO, big))
    small = payloads(PayloadEncoder().stanzas(TO, Ack(job_id="j", attempt=2)))[0]
    assembler = PayloadAssembler()
    assert assembler.feed("a", elements[0]) is None
    assert assembler.feed("b", elements[0]) is None
    assert assembler.feed("a", small) == Ack(job_id="j", attempt=2)
    assert assembler.dropped == 1
    for e in elements[1:]:
        result = assembler.feed("b", e)
    assert result == big
    assert assembler.pending() == 0


@settings(max_examples=100)
@given(data=st.data())
def test_any_subsequence_of_fragments_gives_the_message_or_nothing(data: st.DataObject) -> None:
    """Feeding fragments lost, repeated or reordered never yields a wrong message."""
    big = Ack(job_id=base64.b64encode(os.urandom(30_000)).decode(), attempt=1)
    elements = payloads(PayloadEncoder(max_stanza=MIN_MAX_STANZA).stanzas(TO, big))
    order = data.draw(st.lists(st.sampled_from(range(len(elements))), max_size=3 * len(elements)))
    assembler = PayloadAssembler()
    for index in order:
        try:
            result = assembler.feed("x", elements[index])
        except DecodeError:
            continue
        assert result is None or result == big


# --- presence and errors ----------------------------------------------------------------------


@given(
    free=st.none() | st.integers(0, 64),
    running=st.integers(0, 64),
    name=st.text(max_size=20),
    site=st.text(max_size=20),
)
def test_presence_info_round_trips(free: int | None, running: int, name: str, site: str) -> None:
    """An agent's presence payload parses back to the same PresenceInfo."""
    info = PresenceInfo(
        role="agent",
        instance="a1b2",
        name=name,
        capabilities=Capabilities(
            slots=4, memory=2**33, site=site, tags=("gpu",), storage=("/data",)
        ),
        free_slots=free,
        running=running,
    )
    stanza = ET.fromstring(presence_stanza("engine@wfe.example.org", info))
    assert stanza.get("to") == "engine@wfe.example.org" and stanza.get("type") is None
    payload = stanza.find(TAG)
    assert payload is not None
    assert parse_presence(payload) == info
    assert "slots free" in (stanza.findtext("status") or "")


def test_broadcast_and_unavailable_presence() -> None:
    """A presence without ``to`` is a broadcast; unavailable has the type and no payload."""
    assert ET.fromstring(presence_stanza(None)).get("to") is None
    gone = ET.fromstring(presence_stanza("a@b", available=False))
    assert gone.get("type") == "unavailable" and gone.find(TAG) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("nope", "not JSON"),
        ("[]", "expected an object"),
        ('{"role":"boss","instance":"x"}', "role 'agent' or 'controller'"),
        ('{"role":"agent","instance":"x","capabilities":{"slots":"4"}}', "capabilities"),
        ('{"role":"agent","instance":"x","free_slots":true}', "free_slots"),
    ],
)
def test_malformed_presence_payloads_are_refused(payload: str, message: str) -> None:
    """A presence payload that is not a valid PresenceInfo raises DecodeError naming why."""
    with pytest.raises(DecodeError, match=message):
        parse_presence(element(payload))


def test_error_stanza_names_condition_and_text() -> None:
    """An error reply is a type=error message with an RFC 6120 condition and the reason."""
    stanza = ET.fromstring(error_stanza(TO, "forbidden", "you are not <my> controller"))
    assert stanza.get("type") == "error"
    error = stanza.find("error")
    assert error is not None and error.get("type") == "auth"
    assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden") is not None
    assert (
        error.findtext("{urn:ietf:params:xml:ns:xmpp-stanzas}text") == "you are not <my> controller"
    )


def test_jid_helpers() -> None:
    """bare_jid drops the resource and folds case; is_bare_jid accepts only user@domain."""
    assert bare_jid("Agent1@WFE.example.org/Res/x") == "agent1@wfe.example.org"
    assert is_bare_jid("agent1@wfe.example.org")
    for bad in ("agent1", "@d", "a@", "a@d/r", "a b@d", "a@b@c"):
        assert not is_bare_jid(bad)


def test_fragment_element_escapes_attributes() -> None:
    """Attribute values are quoted and escaped, so an id cannot break the element."""
    e = ET.fromstring(Fragment(text="x", enc="zlib", id='m"1<', part=1, parts=2).element())
    assert e.get("id") == 'm"1<'


def test_protocols_xmpp_stays_sans_io() -> None:
    """Importing wfe.protocols.xmpp loads no I/O library (trio, asyncio, slixmpp, socket)."""
    code = (
        "import sys, wfe.protocols.xmpp; "
        "print(json.dumps(sorted(m for m in ('trio','asyncio','slixmpp','socket','sqlite3','trio_asyncio') "
        "if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []
