"""``wfe.engine.dispatch.queue``: the order jobs wait in, held requests, stale entries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.dispatch.live import LiveJob
from wfe.engine.dispatch.queue import Entry, JobQueue
from wfe.engine.dispatch.timers import Timers


def make_queue() -> tuple[JobQueue, list[int]]:
    wakes: list[int] = []
    return JobQueue(Timers(), lambda: wakes.append(1), lambda: 100.0), wakes


def live(queue: JobQueue, job_id: str, priority: int = 0, request_id: str | None = None) -> LiveJob:
    job = LiveJob(
        job_id=job_id,
        script_name="noop",
        params={},
        priority=priority,
        requirements={},
        on=None,
        max_attempts=1,
        timeout=60.0,
        seq=queue.next_seq(),
        parent_id=None,
        request_id=request_id,
    )
    queue.jobs[job_id] = job
    return job


def in_line(queue: JobQueue) -> list[str]:
    popped: list[Entry] = []
    order = [ready.job_id for ready in queue.pop_ready(popped)]
    queue.put_back(popped, set())
    return order


def test_jobs_wait_by_priority_then_age_and_each_enqueue_wakes_the_dispatcher() -> None:
    """Higher priority first, older first among equals; queuing wakes a dispatch round."""
    queue, wakes = make_queue()
    for job_id, priority in (("old", 0), ("urgent", 5), ("new", 0)):
        queue.enqueue(live(queue, job_id, priority))
    assert in_line(queue) == ["urgent", "old", "new"]
    assert len(wakes) == 3


def test_a_job_queued_again_waits_once() -> None:
    """Queuing a job twice leaves one entry that counts: the older one is stale."""
    queue, _ = make_queue()
    job = live(queue, "j")
    queue.enqueue(job)
    queue.enqueue(job)
    assert in_line(queue) == ["j"]


def test_a_held_requests_jobs_wait_out_of_line_until_released() -> None:
    """Held: its jobs are kept back (and counted); released: they are in line again, and
    a job queued before the hold is kept back when its turn comes."""
    queue, _ = make_queue()
    before = live(queue, "before", request_id="r1")
    queue.enqueue(before)
    queue.hold("r1")
    queue.enqueue(live(queue, "during", request_id="r1"))
    queue.enqueue(live(queue, "other"))
    assert in_line(queue) == ["other"]
    assert queue.held() == {"r1": 2}
    queue.release("r1")
    assert queue.held() == {}
    assert sorted(in_line(queue)) == ["before", "during", "other"]


def test_a_job_whose_result_an_agent_announced_waits_for_it() -> None:
    """A result announced in a hello keeps its job out of line until it is read, or the
    agent that announced it goes away."""
    queue, _ = make_queue()
    job = live(queue, "j")
    queue.enqueue(job)
    queue.expect_late(("j", 1), "a")
    assert in_line(queue) == []
    queue.late_read(("j", 1))
    assert in_line(queue) == ["j"]
    queue.expect_late(("j", 1), "a")
    queue.agent_gone("a")
    assert in_line(queue) == ["j"]


def test_an_ending_job_is_known_but_not_live() -> None:
    """Between its decided end and the commit a job is neither in line nor taken on again."""
    queue, _ = make_queue()
    job = live(queue, "j")
    queue.enqueue(job)
    queue.begin_end(job)
    assert queue.known("j") and "j" not in queue.jobs and in_line(queue) == []
    queue.end_committed("j")
    assert not queue.known("j")


def test_waiting_for_an_agent_has_a_timer_per_enqueue() -> None:
    """A job with wait_agent gets a timer wait_agent seconds after each time it is queued."""
    timers = Timers()
    queue = JobQueue(timers, lambda: None, lambda: 100.0)
    job = live(queue, "j")
    job.wait_agent = 30.0
    queue.enqueue(job)
    assert (timers.next_at(), len(timers)) == (130.0, 1)


def test_a_job_taken_on_again_does_not_match_its_old_entries() -> None:
    """A job cancelled while queued and taken on again (a retry) waits once, not once per
    entry it ever had."""
    queue, _ = make_queue()
    queue.enqueue(live(queue, "j"))
    queue.drop(queue.jobs["j"])
    queue.enqueue(live(queue, "j"))
    assert in_line(queue) == ["j"]


@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.integers(-2, 2), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_every_waiting_job_comes_out_once_in_order(ops: list[tuple[str, int, bool]]) -> None:
    """Over any sequence of enqueues and drops, the line holds each job still live and
    queued exactly once, by priority then age."""
    queue, _ = make_queue()
    for job_id, priority, drop in ops:
        job = queue.jobs.get(job_id) or live(queue, job_id, priority)
        if drop:
            queue.drop(job)
        else:
            queue.jobs[job_id] = job
            queue.enqueue(job)
    order = in_line(queue)
    assert sorted(order) == sorted(queue.jobs)
    keys = [(-queue.jobs[j].priority, queue.jobs[j].seq) for j in order]
    assert keys == sorted(keys)
