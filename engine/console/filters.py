"""Which events a console stream wants, and what request and namespace each event belongs to."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from wfe.engine.repository import Event


@attrs.frozen(kw_only=True)
class EventFilter:
    """Which events a stream wants; an empty filter takes every event."""

    kinds: tuple[str, ...] = ()  # kind prefixes, e.g. ("job.", "request.state")
    subjects: frozenset[str] = frozenset()  # exact subjects (job ids, request ids, agent names)
    request: str | None = None  # the request's own events, and those of its jobs
    namespace: str | None = None  # events of requests (and their jobs) in the namespace

    @property
    def everything(self) -> bool:
        return not (self.kinds or self.subjects or self.request or self.namespace)

    def matches(self, event: Event, request: str | None, namespace: str | None) -> bool:
        if self.kinds and not event.kind.startswith(self.kinds):
            return False
        if self.subjects and event.subject not in self.subjects:
            return False
        if self.request is not None and request != self.request:
            return False
        return self.namespace is None or namespace == self.namespace


class EventIndex:
    """What request and namespace an event belongs to, learned from the events themselves."""

    def __init__(self, max_jobs: int = 200_000) -> None:
        self.max_jobs = max_jobs
        self.job_request: dict[str, str] = {}
        self.request_namespace: dict[str, str] = {}

    def learn(self, event: Event) -> tuple[str | None, str | None]:
        """Return ``(request, namespace)`` of ``event`` (None when unknown)."""
        data = event.data
        kind = event.kind
        if kind.startswith("request."):
            request: str | None = event.subject
            namespace = data.get("namespace")
            if isinstance(namespace, str) and request is not None:
                self.request_namespace[request] = namespace
        else:
            request = data.get("request") if isinstance(data.get("request"), str) else None
            if kind == "job.created":
                parent = data.get("parent")
                if request is None and isinstance(parent, str):
                    request = self.job_request.get(parent)
                if request is not None:
                    self._remember(event.subject, request)
            elif request is None and (kind.startswith("job.") or kind.startswith("attempt.")):
                request = self.job_request.get(event.subject)
        namespace = data.get("namespace")
        if not isinstance(namespace, str):
            namespace = None if request is None else self.request_namespace.get(request)
        return request, namespace

    def _remember(self, job_id: str, request: str) -> None:
        if len(self.job_request) >= self.max_jobs:
            self.job_request.pop(next(iter(self.job_request)))
        self.job_request[job_id] = request

    def seed(
        self, namespaces: Iterable[tuple[str, str]], job_requests: Iterable[tuple[str, str]]
    ) -> None:
        """Learn the namespaces of requests ``(request, namespace)``, newest first, and the
        requests of unfinished jobs ``(job, request)`` (``Engine.event_index_seed``)."""
        for rid, namespace in namespaces:
            self.request_namespace[rid] = namespace
        for job_id, rid in job_requests:
            self._remember(job_id, rid)
