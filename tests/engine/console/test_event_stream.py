"""One subscription's stream: what it keeps and misses, frames taken at once, replay, shared and compressed frames."""

from __future__ import annotations

import json
import zlib

import pytest
import trio

from wfe.engine.console.filters import EventFilter
from wfe.engine.console.hub import ConsoleHub
from wfe.engine.console.streams import Batch, EventStream, Frame, StreamGroup
from wfe.engine.console.wire import Wire
from wfe.protocols.console_frames import decode_binary

from .conftest import event, taken


def test_a_full_stream_counts_misses_and_reports_them_after_what_it_kept() -> None:
    """Batches that do not fit are not queued: the tick hands over the kept events, then one
    `missed` notice with the first and last id and the count; then it starts afresh. A stream
    that joins its group late does not get what was committed before it joined."""
    woken: list[int] = []
    group = StreamGroup(EventFilter())
    stream = EventStream(7, EventFilter(), max_pending=3, wake=lambda: woken.append(1))
    group.join(stream)
    group.add(Batch(1, 2, 2, '{"id":1},{"id":2}'))
    late = EventStream(8, EventFilter(), max_pending=3, wake=lambda: None)
    group.join(late)
    group.add(Batch(3, 4, 2, '{"id":3},{"id":4}'))  # 4 > 3: missed
    group.add(Batch(5, 5, 1, '{"id":5}'))  # missed too: nothing is queued after a gap
    assert not woken and not stream.due  # nothing before the tick
    group.deliver()
    assert woken and stream.due
    frames = [json.loads(f) for f in taken(stream)]
    assert frames == [
        {"stream": 7, "events": [{"id": 1}, {"id": 2}]},
        {"stream": 7, "missed": {"first_id": 3, "last_id": 5, "count": 3}},
    ]
    assert [json.loads(f) for f in taken(late)] == [
        {"stream": 8, "events": [{"id": 3}, {"id": 4}, {"id": 5}]}
    ]
    assert not stream.due and stream.missed_total == 3
    group.add(Batch(6, 6, 1, '{"id":6}'))
    assert taken(stream) == []  # not before the tick
    group.deliver()
    assert [json.loads(f) for f in taken(stream)] == [{"stream": 7, "events": [{"id": 6}]}]


def test_a_stream_takes_a_frame_at_once_only_while_it_holds_nothing() -> None:
    """A tick's frame goes out through send_now while the stream holds nothing; once send_now
    refuses (the connection is busy or its socket full) the frame is held, and later frames
    queue behind it, in order, even when send_now would take them; a missed notice waiting
    holds them too, so the client always reads events and gaps in id order."""
    direct: list[str] = []
    accept = [True]

    def send_now(stream: EventStream, frame: Frame) -> bool:
        if accept[0]:
            direct.append(f'{{"stream":{stream.id},"events":[{frame.body}]}}')
        return accept[0]

    group = StreamGroup(EventFilter())
    stream = EventStream(5, EventFilter(), max_pending=3, wake=lambda: None, send_now=send_now)
    group.join(stream)

    def tick(*ids: int) -> None:
        for i in ids:
            group.add(Batch(i, i, 1, f'{{"id":{i}}}'))
        group.deliver()

    tick(1)
    assert direct == ['{"stream":5,"events":[{"id":1}]}'] and not stream.due and stream.sent == 1
    accept[0] = False
    tick(2)
    accept[0] = True
    tick(3)  # behind 2: held, not sent at once
    assert len(direct) == 1 and stream.due
    assert [json.loads(f) for f in taken(stream)] == [
        {"stream": 5, "events": [{"id": 2}]},
        {"stream": 5, "events": [{"id": 3}]},
    ]
    accept[0] = False
    tick(4, 5, 6, 7)  # the fourth is over max_pending: missed
    accept[0] = True
    tick(8)  # behind the gap: held for the notice
    assert len(direct) == 1
    assert [json.loads(f) for f in taken(stream)] == [
        {"stream": 5, "events": [{"id": 4}, {"id": 5}, {"id": 6}]},
        {"stream": 5, "missed": {"first_id": 7, "last_id": 8, "count": 2}},
    ]
    tick(9)
    assert direct[-1] == '{"stream":5,"events":[{"id":9}]}' and not stream.due


async def test_a_replayed_stream_returns_what_was_read_first() -> None:
    left, right = trio.testing.memory_stream_pair()
    replay = Wire(right, b"GET / HTTP/1.1\r\n\r\nrest")
    await left.send_all(b"+more")
    assert await replay.receive_some(5) == b"GET /"
    assert await replay.receive_some() == b" HTTP/1.1\r\n\r\nrest"
    assert await replay.receive_some() == b"+more"


async def test_streams_of_one_filter_share_one_frame_per_tick() -> None:
    """A tick builds one frame body per set of identical holdings: three streams of one
    filter share it, a stream of another filter gets its own, and a stream that still holds
    an earlier frame (its writer fell behind) still gets the shared one for this tick."""
    hub = ConsoleHub(engine=None)  # type: ignore[arg-type]
    same = [EventStream(n, EventFilter(), max_pending=100, wake=lambda: None) for n in (1, 2, 3)]
    jobs = EventStream(4, EventFilter(kinds=("job.",)), max_pending=100, wake=lambda: None)
    for stream in (*same, jobs):
        hub.add(stream)
    hub.publish([event(1, "job.created", "j1"), event(2, "attempt.state", "j1")])
    hub.tick()
    assert hub.frames_built == 2
    assert [json.loads(m) for m in taken(same[0])] == [
        {
            "stream": 1,
            "events": [
                {"id": 1, "at": 0.0, "kind": "job.created", "subject": "j1", "data": {}},
                {"id": 2, "at": 0.0, "kind": "attempt.state", "subject": "j1", "data": {}},
            ],
        }
    ]
    assert [e["id"] for e in json.loads(taken(jobs)[0])["events"]] == [1]
    hub.publish([event(3, "job.state", "j1", state="running"), event(4, "attempt.state", "j1")])
    hub.tick()
    assert (
        hub.frames_built == 4
    )  # stream 1 sent its first frame; 2 and 3 hold two, but share the new one
    lagging = [json.loads(m) for m in taken(same[1])]
    assert [[e["id"] for e in f["events"]] for f in lagging] == [[1, 2], [3, 4]]  # in order
    assert [e["id"] for e in json.loads(taken(same[0])[0])["events"]] == [3, 4]


async def test_a_compressed_stream_sends_binary_frames_that_decode_to_the_same_events() -> None:
    """With ``compress`` a frame is 4 bytes of stream id and zlib-compressed JSON; decoded,
    it is the object a text frame would be. A missed notice stays a text frame."""
    hub = ConsoleHub(engine=None)  # type: ignore[arg-type]
    plain = EventStream(1, EventFilter(), max_pending=3, wake=lambda: None)
    packed = EventStream(258, EventFilter(), max_pending=3, wake=lambda: None, compress=True)
    hub.add(plain)
    hub.add(packed)
    hub.publish([event(1, "job.created", "j1", name="x" * 500), event(2, "job.state", "j1")])
    hub.publish([event(3, "job.state", "j1"), event(4, "job.state", "j1")])  # 4 > 3: missed
    hub.tick()
    assert hub.frames_built == 1
    text, notice = taken(plain)
    binary, packed_notice = taken(packed)
    assert isinstance(binary, bytes) and binary[:4] == b"\x00\x00\x01\x02"
    assert len(binary) < len(text) / 3  # the repeated name compresses
    assert decode_binary(binary) == {**json.loads(text), "stream": 258}
    assert json.loads(packed_notice) == {**json.loads(notice), "stream": 258}


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (b"\x00\x01", "too short"),
        (b"\x00\x00\x00\x07not zlib", "stream 7"),
        (b"\x00\x00\x00\x07" + zlib.compress(b"[1,"), "stream 7"),
    ],
)
def test_a_bad_binary_message_is_named(message: bytes, problem: str) -> None:
    """decode_binary raises ValueError with a message that says what is wrong."""
    with pytest.raises(ValueError, match=problem):
        decode_binary(message)
