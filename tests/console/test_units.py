"""The console's pure parts: request parsing, event fan-out and missed counts, the outbox,
roles and token names, and the HTTP side of the port."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from wfe.engine.console import protocol, web
from wfe.engine.console.filters import EventFilter, EventIndex
from wfe.engine.console.hub import ConsoleHub, Rate, encode_event
from wfe.engine.console.outbox import Outbox
from wfe.engine.console.streams import Batch, EventStream, Frame, StreamGroup
from wfe.engine.console.tokens import Role, TokenError, check_name, digest
from wfe.engine.console.wire import Wire
from wfe.engine.repository import Event, Missed
from wfe.engine.repository.writer import _dumps
from wfe.protocols.console_frames import decode_binary

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def taken(stream: EventStream) -> list[Any]:
    """What the stream's writer would send now, read back by a websocket client."""
    chunks, count = stream.take_chunks()
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(b"".join(chunks))
    messages = [e.data for e in client.events() if isinstance(e, TextMessage | BytesMessage)]
    assert len(messages) == count
    return messages


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


def event(n: int, kind: str = "job.state", subject: str = "j1", **data: Any) -> Event:
    return Event(id=n, at=0.0, kind=kind, subject=subject, data=data)


@given(
    kind=st.text(max_size=20),
    subject=st.text(max_size=20),
    data=st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    at=st.floats(min_value=0, max_value=4e9),
)
def test_an_event_is_sent_as_the_object_it_was_stored_as(
    kind: str, subject: str, data: dict[str, Any], at: float
) -> None:
    """Built from a committed row (its data as stored JSON text) or from a dict, an event
    encodes to the JSON object of its id, time, kind, subject and data."""
    expected = {"id": 7, "at": at, "kind": kind, "subject": subject, "data": data}
    stored = Event.from_row((7, at, kind, subject, _dumps(data) if data else "{}"))
    assert stored.raw is not None
    for event in (stored, Event(id=7, at=at, kind=kind, subject=subject, data=data)):
        assert json.loads(encode_event(event)) == expected


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


async def test_the_hub_fans_out_once_and_filters() -> None:
    """One batch reaches every stream whose filter takes it; a hub-level gap is a gap for all
    (and what follows it waits for the gap to be reported); a terminal job.state wakes the
    job's waiters."""
    hub = ConsoleHub(engine=None)  # type: ignore[arg-type]
    everything = EventStream(1, EventFilter(), max_pending=100, wake=lambda: None)
    jobs_only = EventStream(
        2, EventFilter(kinds=("job.created",)), max_pending=100, wake=lambda: None
    )
    of_request = EventStream(3, EventFilter(request="r-a-0001"), max_pending=100, wake=lambda: None)
    of_namespace = EventStream(4, EventFilter(namespace="ns"), max_pending=100, wake=lambda: None)
    for stream in (everything, jobs_only, of_request, of_namespace):
        hub.add(stream)
    ended = hub.job_ended("j2")
    hub.publish(
        [
            event(1, "request.created", "r-a-0001", namespace="ns"),
            event(2, "job.created", "j1", request="r-a-0001", parent=None),
            event(3, "job.created", "j2", parent="j1"),
            event(4, "attempt.state", "j2", state="running"),
            Missed(first_id=5, last_id=6),
            event(7, "job.state", "j2", state="succeeded"),
            event(8, "job.created", "j9", parent=None),
        ]
    )
    assert ended.is_set()
    hub.tick()

    def ids(stream: EventStream) -> list[Any]:
        out: list[Any] = []
        for frame in taken(stream):
            data = json.loads(frame)
            out += (
                [e["id"] for e in data["events"]]
                if "events" in data
                else [("missed", data["missed"]["count"])]
            )
        return out

    assert ids(everything) == [1, 2, 3, 4, ("missed", 4)]  # 5..8
    assert ids(jobs_only) == [2, 3, ("missed", 3)]  # 5, 6 and 8
    assert ids(of_request) == [1, 2, 3, 4, ("missed", 3)]  # 5, 6 and 7
    assert ids(of_namespace) == [1, 2, 3, 4, ("missed", 3)]
    hub.publish([event(9, "job.created", "j10", request="r-a-0001")])
    hub.tick()
    assert ids(everything) == [9] and ids(of_request) == [9] and ids(of_namespace) == [9]


def test_the_index_learns_requests_and_namespaces_from_events() -> None:
    """Jobs inherit their parent's request; requests keep their namespace."""
    index = EventIndex(max_jobs=2)
    assert index.learn(event(1, "request.created", "r1", namespace="ns")) == ("r1", "ns")
    assert index.learn(event(2, "job.created", "j1", request="r1")) == ("r1", "ns")
    assert index.learn(event(3, "job.created", "j2", parent="j1")) == ("r1", "ns")
    assert index.learn(event(4, "job.state", "j2", state="running")) == ("r1", "ns")
    index.learn(event(5, "job.created", "j3", parent="j2"))
    assert len(index.job_request) == 2  # bounded: the oldest is forgotten
    assert index.learn(event(6, "agent.state", "a1")) == (None, None)


def test_the_rate_is_events_per_second_over_the_window() -> None:
    rate = Rate(window=10)
    for second in range(20):
        rate.add(100, float(second))
    assert rate.per_second(20.0) == pytest.approx(100, rel=0.1)
    assert Rate().per_second(5.0) == 0.0


async def test_the_outbox_bounds_frames_and_waits_only_in_put(autojump_clock: Any) -> None:
    """put_nowait refuses when full; put waits for room; get drains in order; close ends it."""
    outbox = Outbox(max_frames=2)
    assert outbox.put_nowait("a") and outbox.put_nowait("b")
    assert not outbox.put_nowait("c") and outbox.refused == 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.put, "c")
        await trio.sleep(1)
        assert len(outbox) == 2
        assert await outbox.get() == "a"
    assert [await outbox.get(), await outbox.get()] == ["b", "c"]
    outbox.close()
    with pytest.raises(trio.EndOfChannel):
        await outbox.get()
    with pytest.raises(trio.ClosedResourceError):
        await outbox.put("d")


def test_roles_are_ordered_and_names_checked() -> None:
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert Role.parse("Operator") is Role.OPERATOR
    with pytest.raises(TokenError, match="unknown role 'root': expected viewer, operator or admin"):
        Role.parse("root")
    assert check_name("ci.bot@site-1") == "ci.bot@site-1"
    for bad in ("", "-x", "a b", "x" * 65, "bootstrap"):
        with pytest.raises(TokenError):
            check_name(bad)
    assert digest("s") == "043a718774c572bd8a25adbeb1bfcd5c0256ae11cecf9f9c3f925d0e52beaf89"


def test_the_http_side_serves_the_page_and_refuses_the_rest() -> None:
    """GET / is the page; unknown paths 404; other methods 405; a websocket upgrade from
    another origin is refused; heads that are not HTTP are errors."""
    page = web.answer(web.parse_head(b"GET / HTTP/1.1\r\nHost: h:1\r\n\r\n"))
    assert page.startswith(b"HTTP/1.1 200 OK\r\n") and b"<title>wfe console</title>" in page
    assert b"Content-Security-Policy: default-src 'self'" in page
    assert web.answer(web.parse_head(b"GET /console.js HTTP/1.1\r\n\r\n")).startswith(
        b"HTTP/1.1 200"
    )
    assert web.answer(web.parse_head(b"GET /../keys HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert web.answer(web.parse_head(b"GET /nope.html HTTP/1.1\r\n\r\n")).startswith(
        b"HTTP/1.1 404"
    )
    assert web.answer(web.parse_head(b"POST / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
    head = web.parse_head(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:5\r\nUpgrade: websocket\r\nOrigin: http://127.0.0.1:5\r\n\r\n"
    )
    assert head.wants_websocket and head.same_origin()
    other = web.parse_head(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:5\r\nUpgrade: websocket\r\nOrigin: http://evil.example\r\n\r\n"
    )
    assert not other.same_origin()
    for bad in (b"hello\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"):
        with pytest.raises(web.BadHttp):
            web.parse_head(bad)


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
