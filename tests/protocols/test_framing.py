"""Length-prefixed framing of messages on a byte stream."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.protocols.errors import DecodeError
from wfe.protocols.framing import FrameDecoder, frame


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_frames_split_anywhere_come_back_whole_and_in_order(
    payloads: list[bytes], cuts: list[int]
) -> None:
    """However the stream is cut into reads, the decoder returns every payload in order."""
    stream = b"".join(frame(p) for p in payloads)
    points = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    decoder = FrameDecoder()
    received: list[bytes] = []
    for start, end in zip(points, points[1:], strict=False):
        received += decoder.feed(stream[start:end])
    assert received == payloads
    assert decoder.pending == 0


def test_one_byte_at_a_time() -> None:
    """A frame fed byte by byte appears exactly when its last byte arrives."""
    wire = frame(b"hello")
    decoder = FrameDecoder()
    for i, byte in enumerate(wire[:-1]):
        assert decoder.feed(bytes([byte])) == []
        assert decoder.pending == i + 1
    assert decoder.feed(wire[-1:]) == [b"hello"]
    assert decoder.pending == 0


def test_oversized_declared_length_is_refused_before_the_body_arrives() -> None:
    """A header declaring more than max_bytes raises at once, without waiting for the body."""
    decoder = FrameDecoder(max_bytes=100)
    assert decoder.feed(frame(b"x" * 100)) == [b"x" * 100]
    with pytest.raises(DecodeError, match="frame of 101 bytes exceeds the limit of 100"):
        decoder.feed(struct.pack(">I", 101))


def test_frames_before_an_oversized_one_are_not_lost_in_the_error() -> None:
    """The refusal comes on the feed that carries the bad header, after earlier frames."""
    decoder = FrameDecoder(max_bytes=10)
    assert decoder.feed(frame(b"ok")) == [b"ok"]
    with pytest.raises(DecodeError):
        decoder.feed(struct.pack(">I", 2**32 - 1) + b"junk")


def test_empty_payload_is_a_frame() -> None:
    """A zero-length frame is delivered as b''."""
    assert FrameDecoder().feed(frame(b"") + frame(b"a")) == [b"", b"a"]
