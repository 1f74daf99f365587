"""Events: written with the state they describe, seen by subscribers only after commit, in order."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from wfe.engine.repository import Event, Missed, Repository, Tx
from wfe.engine.repository.events import Subscription

GUARD = 10


def emit(subject: str, **data: Any) -> Any:
    def op(tx: Tx) -> None:
        tx.emit("test.happened", subject, data)

    return op


async def test_event_is_stored_with_its_fields(repo: Repository) -> None:
    """An emitted event comes back from events_since with id, wall-clock time, kind, subject, data."""
    with trio.fail_after(GUARD):
        await repo.write(emit("job-1", state="running", attempt=2))
        await repo.write(lambda tx: tx.emit("bare", "job-2"))
        events = await repo.events_since(0)
    first, second = events
    assert (first.id, first.kind, first.subject) == (1, "test.happened", "job-1")
    assert first.data == {"state": "running", "attempt": 2}
    assert second == Event(id=2, at=second.at, kind="bare", subject="job-2", data={})
    assert 1.7e9 < first.at <= second.at  # unix seconds
    assert await repo.events_since(1) == [second]
    assert await repo.events_since(0, limit=1) == [first]


async def test_events_of_one_batch_share_its_time(repo: Repository, gate: Any) -> None:
    """Events committed in one transaction carry the same `at`."""
    with trio.fail_after(GUARD):
        await gate.hold()
        for n in range(3):
            repo.write_nowait(emit(f"job-{n}"))
        gate.release()
        await repo.flush()
    events = await repo.events_since(0)
    assert len({e.at for e in events}) == 1


async def test_subscriber_sees_event_only_after_commit(repo: Repository, gate: Any) -> None:
    """While the transaction is open, neither subscribers nor readers see its event."""

    def emit_then_hold(tx: Tx) -> None:
        tx.emit("test.happened", "job-1")
        gate._block(tx)

    with trio.fail_after(GUARD):
        async with repo.subscribe() as subscription:
            repo.write_nowait(emit_then_hold)
            await trio.to_thread.run_sync(gate._entered.wait, abandon_on_cancel=True)
            assert subscription.receive_nowait() is None
            assert await repo.events_since(0) == []
            gate.release()
            event = await subscription.__anext__()
    assert isinstance(event, Event) and event.subject == "job-1"
    assert await repo.events_since(0) == [event]


async def test_subscriber_gets_committed_events_in_id_order(repo: Repository) -> None:
    """Events from many concurrent writers reach a subscriber once each, in id order."""
    received: list[Event | Missed] = []

    async def writer(n: int) -> None:
        for k in range(5):
            await repo.write(emit(f"w{n}-{k}"))

    with trio.fail_after(GUARD):
        async with repo.subscribe(max_buffer=10_000) as subscription:
            async with trio.open_nursery() as nursery:
                for n in range(40):
                    nursery.start_soon(writer, n)
            async for item in subscription:
                received.append(item)
                if len(received) == 200:
                    break
    stored = await repo.events_since(0, limit=1000)
    assert received == stored
    assert [e.id for e in stored] == list(range(1, 201))


async def test_receive_batch_returns_everything_waiting(repo: Repository) -> None:
    """receive_batch waits for the first item and returns all that are buffered, in order."""
    with trio.fail_after(GUARD):
        async with repo.subscribe(max_buffer=3) as subscription:
            async with trio.open_nursery() as nursery:
                batches: list[list[Event | Missed]] = []

                async def consume() -> None:
                    batches.append(await subscription.receive_batch())

                nursery.start_soon(consume)
                await trio.testing.wait_all_tasks_blocked()
                assert batches == []  # nothing committed yet: it waits
                await repo.write(emit("job-1"))
            for n in range(2, 7):
                await repo.write(emit(f"job-{n}"))
            second = await subscription.receive_batch(max_items=2)
            third = await subscription.receive_batch()
    assert [e.subject for e in batches[0] if isinstance(e, Event)] == ["job-1"]
    assert [e.subject for e in second if isinstance(e, Event)] == ["job-2", "job-3"]
    assert isinstance(third[0], Event)
    assert third[0] == Event(id=4, at=third[0].at, kind="test.happened", subject="job-4", data={})
    assert third[1:] == [Missed(first_id=5, last_id=6)]


class StepCounter(trio.abc.Instrument):
    """Counts the scheduler steps of one task."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_subscriber_takes_one_commits_events_in_one_step(repo: Repository) -> None:
    """The five events of one commit reach an iterating subscriber in one task step."""

    def five(tx: Tx) -> None:
        for n in range(5):
            tx.emit("test.happened", f"job-{n}")

    counter = StepCounter()
    received: list[str] = []
    with trio.fail_after(GUARD):
        async with repo.subscribe() as subscription, trio.open_nursery() as nursery:

            async def consume() -> None:
                counter.task = trio.lowlevel.current_task()
                async for event in subscription:
                    assert isinstance(event, Event)
                    received.append(event.subject)

            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.add_instrument(counter)
            try:
                await repo.write(five)
                await trio.testing.wait_all_tasks_blocked()
            finally:
                trio.lowlevel.remove_instrument(counter)
            nursery.cancel_scope.cancel()
    assert received == [f"job-{n}" for n in range(5)]
    assert counter.steps == 1


async def test_a_subscriber_with_events_waiting_can_still_be_cancelled(repo: Repository) -> None:
    """Each step of the iteration is a cancellation point; a cancelled one takes no event."""
    with trio.fail_after(GUARD):
        async with repo.subscribe() as subscription:
            await repo.write(emit("job-1"))
            await repo.write(emit("job-2"))
            first = await subscription.__anext__()
            with trio.CancelScope() as scope:
                scope.cancel()
                await subscription.__anext__()
            assert scope.cancelled_caught
            second = await subscription.__anext__()
    assert isinstance(first, Event) and first.subject == "job-1"
    assert isinstance(second, Event) and second.subject == "job-2"


async def test_subscription_starts_at_subscribe(repo: Repository) -> None:
    """A subscription does not replay events committed before it was made."""
    with trio.fail_after(GUARD):
        await repo.write(emit("before"))
        async with repo.subscribe() as subscription:
            await repo.write(emit("after"))
            item = await subscription.__anext__()
    assert isinstance(item, Event) and item.subject == "after"


async def test_slow_subscriber_does_not_stop_writes_and_learns_what_it_missed(
    repo: Repository,
) -> None:
    """Past max_buffer a subscriber gets one Missed marker instead, and catches up with events_since."""
    with trio.fail_after(GUARD):
        async with repo.subscribe(max_buffer=5) as slow:
            for n in range(1, 21):
                await repo.write(emit(f"job-{n}"))  # never waits for the subscriber
            assert repo.statistics().commits >= 20
            assert slow.buffered == 5 and slow.missed_total == 15
            got = [await slow.__anext__() for _ in range(6)]
            assert [e.subject for e in got[:5] if isinstance(e, Event)] == [
                f"job-{n}" for n in range(1, 6)
            ]
            missed = got[5]
            assert missed == Missed(first_id=6, last_id=20)
            caught_up = await repo.events_since(missed.first_id - 1, limit=missed.last_id)
            assert [e.subject for e in caught_up] == [f"job-{n}" for n in range(6, 21)]
            await repo.write(emit("job-21"))  # live again after the marker
            item = await slow.__anext__()
    assert isinstance(item, Event) and (item.id, item.subject) == (21, "job-21")


async def test_subscriptions_end_when_the_repository_closes(repo_path: Any) -> None:
    """After close, a subscription yields what it had buffered, then stops iterating."""
    from wfe.engine.repository import open_repository

    with trio.fail_after(GUARD):
        async with open_repository(repo_path) as repo:
            cm = repo.subscribe()
            subscription = await cm.__aenter__()
            await repo.write(emit("last"))
        items = [item async for item in subscription]
        await cm.__aexit__(None, None, None)
    assert [i.subject for i in items if isinstance(i, Event)] == ["last"]


def test_subscription_refuses_an_empty_buffer() -> None:
    """max_buffer must be at least 1."""
    with pytest.raises(ValueError, match="max_buffer must be at least 1"):
        Subscription(0)


class SubscriptionMachine(RuleBasedStateMachine):
    """A subscription's output is its input in order, with skipped runs replaced by Missed markers."""

    def __init__(self) -> None:
        super().__init__()
        self.subscription: Subscription | None = None
        self.next_id = 1
        self.published: list[int] = []
        self.taken: list[Event | Missed] = []

    @precondition(lambda self: self.subscription is None)
    @rule(max_buffer=st.integers(1, 8))
    def subscribe(self, max_buffer: int) -> None:
        self.subscription = Subscription(max_buffer)

    @precondition(lambda self: self.subscription is not None)
    @rule(count=st.integers(0, 12))
    def publish(self, count: int) -> None:
        assert self.subscription is not None
        events = [
            Event(id=i, at=0.0, kind="k", subject="s", data={})
            for i in range(self.next_id, self.next_id + count)
        ]
        self.next_id += count
        self.published.extend(e.id for e in events)
        self.subscription._push(events)

    @precondition(lambda self: self.subscription is not None)
    @rule(count=st.integers(1, 12))
    def take(self, count: int) -> None:
        assert self.subscription is not None
        for _ in range(count):
            item = self.subscription.receive_nowait()
            if item is None:
                break
            self.taken.append(item)

    @invariant()
    def buffer_is_bounded(self) -> None:
        if self.subscription is not None:
            assert self.subscription.buffered <= self.subscription.max_buffer

    @invariant()
    def output_is_input_with_gaps_marked(self) -> None:
        covered: list[int] = []
        for item in self.taken:
            if isinstance(item, Missed):
                assert item.first_id <= item.last_id
                covered.extend(range(item.first_id, item.last_id + 1))
            else:
                covered.append(item.id)
        assert covered == self.published[: len(covered)]
        for before, after in zip(self.taken, self.taken[1:], strict=False):
            assert not (isinstance(before, Missed) and isinstance(after, Missed))

    def teardown(self) -> None:
        if self.subscription is None:
            return
        while (item := self.subscription.receive_nowait()) is not None:
            self.taken.append(item)
        self.output_is_input_with_gaps_marked()
        covered = sum(
            i.last_id - i.first_id + 1 if isinstance(i, Missed) else 1 for i in self.taken
        )
        assert covered == len(self.published)  # nothing lost without a marker
        assert self.subscription.missed_total == sum(
            i.last_id - i.first_id + 1 for i in self.taken if isinstance(i, Missed)
        )


TestSubscriptionMachine = SubscriptionMachine.TestCase
