"""The hub: events encoded as stored, fanned out once and filtered, the index of requests and namespaces, the event rate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.console.filters import EventFilter, EventIndex
from wfe.engine.console.hub import ConsoleHub, Rate, encode_event
from wfe.engine.console.streams import EventStream
from wfe.engine.repository import Event, Missed
from wfe.engine.repository.writer import dumps_data

from .conftest import JSON, event, taken


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
    stored = Event.from_row((7, at, kind, subject, dumps_data(data) if data else "{}"))
    assert stored.raw is not None
    for built in (stored, Event(id=7, at=at, kind=kind, subject=subject, data=data)):
        assert json.loads(encode_event(built)) == expected


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
