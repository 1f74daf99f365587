"""A hypothesis state machine over the works table: the repository's ops against a model."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from wfe.engine.repository.repository import connect_writer
from wfe.engine.repository.works import (
    WorkQuery,
    cancel_work,
    deposit_works,
    expire_work,
    find_works,
    update_work,
    withdraw_work,
)
from wfe.engine.repository.writer import Tx
from wfe.engine.works.model import TERMINAL, Work, WorkError, WorkStatus

T = TypeVar("T")


@attrs.define
class Model:
    """What the bucket should hold for one work."""

    priority: int
    retries: int
    status: WorkStatus = WorkStatus.QUEUED
    attempt: int = 1


class Buckets(RuleBasedStateMachine):
    """Deposits, withdrawals by several workers, updates (late ones too), expiries and
    cancels, each one transaction as the writer runs it, checked against a model: withdraw
    serves the highest priority then the oldest, no (work, attempt) is handed out twice, a
    failed or expired attempt requeues until the retries are spent, stale ones change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.conn = connect_writer(Path(self.dir.name) / "wfe.db")
        self.model: dict[str, Model] = {}
        self.order: list[str] = []  # ids in deposit order
        self.handed: set[tuple[str, int]] = set()
        self.holder: dict[str, int] = {}  # running work -> the worker holding it

    def run(self, op: Any) -> Any:
        """Run a write op in its own transaction (what the writer does for a batch of one)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = op(Tx(self.conn, time.time()))
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    def teardown(self) -> None:
        self.conn.close()
        self.dir.cleanup()

    def running(self) -> list[str]:
        return [i for i in self.order if self.model[i].status is WorkStatus.RUNNING]

    @rule(works=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 2)), min_size=1, max_size=4))
    def deposit(self, works: list[tuple[int, int]]) -> None:
        ids = self.run(
            deposit_works([Work(pipeline="p", priority=p, retries=r) for p, r in works], by=None)
        )
        for work_id, (priority, retries) in zip(ids, works, strict=True):
            self.model[work_id] = Model(priority=priority, retries=retries)
            self.order.append(work_id)

    @rule(worker=st.integers(0, 3))
    def withdraw(self, worker: int) -> None:
        got = self.run(withdraw_work(WorkQuery(pipeline="p"), worker=f"w{worker}"))
        queued = [i for i in self.order if self.model[i].status is WorkStatus.QUEUED]
        if not queued:
            assert got is None
            return
        best = max(queued, key=lambda i: (self.model[i].priority, -self.order.index(i)))
        assert got is not None and got.id == best
        key = (best, got.attempt)
        assert key not in self.handed, f"{key} handed out twice"
        self.handed.add(key)
        assert got.attempt == self.model[best].attempt
        self.model[best].status = WorkStatus.RUNNING
        self.holder[best] = worker

    def _ended_badly(self, work_id: str) -> None:
        model = self.model[work_id]
        if model.attempt <= model.retries:
            model.status, model.attempt = WorkStatus.QUEUED, model.attempt + 1
        else:
            model.status = WorkStatus.FAILURE
        self.holder.pop(work_id, None)

    @precondition(lambda self: self.running())
    @rule(data=st.data(), success=st.booleans())
    def update(self, data: st.DataObject, success: bool) -> None:
        work_id = data.draw(st.sampled_from(self.running()))
        status = "success" if success else "failure"
        attempt = self.model[work_id].attempt
        self.run(update_work(work_id, attempt=attempt, changes={"status": status}, by="w"))
        if success:
            self.model[work_id].status = WorkStatus.SUCCESS
            self.holder.pop(work_id, None)
        else:
            self._ended_badly(work_id)

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        work_id = data.draw(st.sampled_from(self.running()))
        assert self.run(expire_work(work_id, self.model[work_id].attempt, "gone")) is not None
        self._ended_badly(work_id)

    @precondition(
        lambda self: any(a > 1 or self.model[i].status in TERMINAL for i, a in self.handed)
    )
    @rule(data=st.data())
    def late_update(self, data: st.DataObject) -> None:
        stale = [
            (i, a)
            for i, a in sorted(self.handed)
            if a != self.model[i].attempt or self.model[i].status is not WorkStatus.RUNNING
        ]
        if not stale:
            return
        work_id, attempt = data.draw(st.sampled_from(stale))
        try:
            self.run(update_work(work_id, attempt=attempt, changes={"status": "success"}, by="w"))
        except WorkError:
            pass
        else:
            raise AssertionError(f"a stale update of {work_id} attempt {attempt} was taken")
        assert self.run(expire_work(work_id, attempt, "late")) is None

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        work_id = data.draw(st.sampled_from(self.order))
        model = self.model[work_id]
        try:
            self.run(cancel_work(work_id, by="op"))
        except WorkError:
            assert model.status in TERMINAL
            return
        assert model.status not in TERMINAL
        model.status = WorkStatus.CANCELLED
        self.holder.pop(work_id, None)

    @invariant()
    def the_repository_agrees_with_the_model(self) -> None:
        stored = {
            w.id: (w.status, w.attempt) for w in find_works(WorkQuery(), limit=10_000)(self.conn)
        }
        assert stored == {i: (m.status, m.attempt) for i, m in self.model.items()}


TestBuckets = Buckets.TestCase
TestBuckets.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
