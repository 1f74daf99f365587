"""Websocket frame headers written past trio-websocket: the bytes wsproto itself would write,
and what a wsproto client reads back as one whole message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from wfe.protocols.ws_frames import BINARY, TEXT, frame_header

# lengths on both sides of the 7-bit, 16-bit and 64-bit length forms
LENGTHS = st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]) | st.integers(0, 3000)


@given(length=LENGTHS, binary=st.booleans())
def test_a_header_and_payload_are_the_bytes_wsproto_writes(length: int, binary: bool) -> None:
    """For every length form, header + payload equals wsproto's own server frame."""
    server = Connection(ConnectionType.SERVER)
    if binary:
        payload = bytes(i % 251 for i in range(length))
        expected = server.send(BytesMessage(data=payload))
        assert frame_header(BINARY, length) + payload == expected
    else:
        text = "é" * (length // 2) + "x" * (length % 2)
        expected = server.send(TextMessage(data=text))
        assert frame_header(TEXT, len(text.encode())) + text.encode() == expected


@given(
    payloads=st.lists(st.binary(max_size=70000), min_size=1, max_size=4),
    cut=st.integers(1, 9000),
)
def test_a_client_reads_the_frames_back_whatever_the_chunking(
    payloads: list[bytes], cut: int
) -> None:
    """A wsproto client fed the frames in arbitrary chunks gets each payload as one message."""
    wire = b"".join(frame_header(BINARY, len(p)) + p for p in payloads)
    client = Connection(ConnectionType.CLIENT)
    got: list[bytes] = []
    partial = b""
    for start in range(0, len(wire), cut):
        client.receive_data(wire[start : start + cut])
        for event in client.events():
            assert isinstance(event, BytesMessage)
            partial += event.data
            if event.message_finished:
                got.append(partial)
                partial = b""
    assert got == payloads


def test_other_opcodes_and_negative_lengths_are_refused() -> None:
    """Only whole text and binary messages are written this way."""
    with pytest.raises(ValueError, match="only text"):
        frame_header(0x9, 0)  # ping
    with pytest.raises(ValueError, match="negative"):
        frame_header(BINARY, -1)
