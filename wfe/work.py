"""The work queue from plain Python: ``from wfe import Work``.

Synchronous, for any script (no trio in the caller)::

    from wfe import Work

    work = Work(pipeline="sample-pipeline", parameters={"a": 1, "b": 2})
    work.deposit()                                   # -> "w0000001"

    work = Work.withdraw(pipeline="sample-pipeline")  # a running Work, or None
    work.results = add(**work.parameters)
    work.status = "success"
    work.update()

Each call opens a console connection to the engine, makes its request and closes it. The
engine is found by ``connect(url, token)`` if it was called, else from ``$WFE_CONFIG`` (or
``./wfe.toml``), with ``$WFE_TOKEN`` or the workspace's token file (a ``worker`` token is
enough). In trio code use the async twin, one connection for many calls::

    async with open_bucket() as bucket:
        ids = await bucket.deposit([Work(pipeline="p")])
        work = await bucket.withdraw("p")

Errors: ``WorkError`` (a bad work, one line naming the field; nothing is sent), and
``ClientError`` for what the engine refuses or when it cannot be reached.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wfe.engine.works.model import FIELDS, WorkError, WorkStatus, parse_work, payload

if TYPE_CHECKING:
    from wfe.engine.cli.client import Client

_target: tuple[str, str] | None = None

#: Filters a withdraw, find or count accepts (see docs/python-api.md).
FILTERS = (
    "event", "site", "priority", "user", "tags", "group", "parent", "status", "since", "until",
)  # fmt: skip


def connect(url: str, token: str) -> None:
    """Use the engine at ``url`` (``ws://host:port/``) with ``token`` from now on."""
    global _target
    _target = (url, token)


def _where() -> tuple[str, str]:
    if _target is not None:
        return _target
    from wfe.engine.cli.client import client_token, engine_url
    from wfe.engine.config import CONFIG_NAME, load_config

    config = load_config(Path(os.environ.get("WFE_CONFIG") or CONFIG_NAME))
    return engine_url(config), client_token(config)


class Work:
    """One work: the seed's fields as attributes (``work.results = ...``), ``payload`` the
    stored dictionary. Keywords are checked at once (``WorkError``, one line naming the field);
    values set later are checked when the work is deposited or updated."""

    __slots__ = ("_data",)
    _data: dict[str, Any]

    def __init__(self, **fields: Any) -> None:
        object.__setattr__(self, "_data", payload(parse_work(fields)))

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Work:
        """A work as the engine sent it (validated)."""
        work = cls.__new__(cls)
        object.__setattr__(work, "_data", payload(parse_work(data)))
        return work

    def __getattr__(self, name: str) -> Any:
        if name in FIELDS:
            return self._data[name]
        raise AttributeError(f"Work has no field {name!r} (fields: {', '.join(FIELDS)})")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in FIELDS:
            raise AttributeError(f"Work has no field {name!r} (fields: {', '.join(FIELDS)})")
        self._data[name] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Work) and other._data == self._data

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Work(id={self.id!r}, pipeline={self.pipeline!r}, status={self.status!r})"

    @property
    def payload(self) -> dict[str, Any]:
        """The work as a dictionary, exactly as stored (a copy)."""
        return dict(self._data)

    def checked(self) -> dict[str, Any]:
        """The payload, validated (raises ``WorkError`` naming a bad field)."""
        return payload(parse_work(self._data))

    # --- synchronous verbs -------------------------------------------------------------------

    def deposit(self) -> str:
        """Queue this work; return its id (also set on it, with status queued)."""
        ids: list[str] = _run(lambda b: b.deposit([self]))
        return ids[0]

    @classmethod
    def deposit_many(cls, works: Sequence[Work]) -> list[str]:
        """Queue ``works`` in one transaction (all or none); return their ids."""
        ids: list[str] = _run(lambda b: b.deposit(works))
        return ids

    @classmethod
    def withdraw(cls, pipeline: str, **filters: Any) -> Work | None:
        """The best queued work of ``pipeline`` (priority 5 first, then oldest), now running
        and leased to you for its timeout; None when the bucket is empty. Filters: event,
        site, priority, user, tags, parent (the job whose tasklets deposited it)."""
        work: Work | None = _run(lambda b: b.withdraw(pipeline, **filters))
        return work

    def update(self) -> None:
        """Send this work's results, products, plots and status (success, failure or
        running) for its attempt; the work then holds what the engine stored."""
        _run(lambda b: b.update(self))

    def heartbeat(self) -> float:
        """Renew the lease of a long work (a worker's heartbeat); return its length in s."""
        lease: float = _run(lambda b: b.heartbeat(self))
        return lease

    def delete(self) -> None:
        """Delete this work (an operator's token is needed)."""
        _run(lambda b: b.delete([str(self.id)]))

    @classmethod
    def get(cls, work_id: str) -> Work:
        work: Work = _run(lambda b: b.get(work_id))
        return work

    @classmethod
    def find(
        cls, pipeline: str | None = None, *, limit: int = 50, offset: int = 0, **filters: Any
    ) -> list[Work]:
        """Works newest first, filtered (pipeline, status, event, site, priority, user, tags,
        group, since, until), one page."""
        works: list[Work] = _run(lambda b: b.find(pipeline, limit=limit, offset=offset, **filters))
        return works

    @classmethod
    def count(cls, pipeline: str | None = None, **filters: Any) -> int:
        count: int = _run(lambda b: b.count(pipeline, **filters))
        return count


def _run(fn: Any) -> Any:
    """Run ``fn(bucket)`` in a fresh trio run over one console connection."""
    import trio

    async def main() -> Any:
        async with open_bucket() as bucket:
            return await fn(bucket)

    return trio.run(main)


def _args(pipeline: str | None, filters: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise WorkError(f"{unknown[0]}: unknown filter (known: {', '.join(FILTERS)})")
    args = {k: v for k, v in filters.items() if v is not None}
    if pipeline is not None:
        args["pipeline"] = pipeline
    if isinstance(args.get("status"), WorkStatus):
        args["status"] = args["status"].value
    return args


class Bucket:
    """The async twin of ``Work``'s verbs over one console connection (``open_bucket``)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def deposit(self, works: Sequence[Work]) -> list[str]:
        """Queue ``works`` (all or none); set their ids and status; return the ids."""
        checked = [w.checked() for w in works]
        for data in checked:
            data.pop("id")
            data["status"] = WorkStatus.CREATED.value
        ids: list[str] = (await self.client.call("work.deposit", works=checked))["ids"]
        for work, work_id in zip(works, ids, strict=True):
            work._data.update(id=work_id, status=WorkStatus.QUEUED.value)
        return ids

    async def withdraw(self, pipeline: str, **filters: Any) -> Work | None:
        found = (await self.client.call("work.withdraw", **_args(pipeline, filters)))["work"]
        return None if found is None else Work.from_payload(found)

    async def update(self, work: Work) -> None:
        data = work.checked()
        stored = await self.client.call(
            "work.update",
            id=data["id"],
            attempt=data["attempt"],
            results=data["results"],
            products=data["products"],
            plots=data["plots"],
            status=data["status"],
        )
        work._data.clear()
        work._data.update(payload(parse_work(stored)))

    async def heartbeat(self, work: Work) -> float:
        beat = await self.client.call("work.heartbeat", id=work.id, attempt=work.attempt)
        return float(beat["lease"])

    async def delete(self, ids: Sequence[str]) -> list[str]:
        deleted: list[str] = (await self.client.call("work.delete", ids=list(ids)))["deleted"]
        return deleted

    async def get(self, work_id: str) -> Work:
        return Work.from_payload(await self.client.call("work.get", id=work_id))

    async def find(
        self, pipeline: str | None = None, *, limit: int = 50, offset: int = 0, **filters: Any
    ) -> list[Work]:
        args = _args(pipeline, filters)
        found = await self.client.call("work.find", limit=limit, offset=offset, **args)
        return [Work.from_payload(w) for w in found["works"]]

    async def count(self, pipeline: str | None = None, **filters: Any) -> int:
        return int((await self.client.call("work.count", **_args(pipeline, filters)))["count"])


@asynccontextmanager
async def open_bucket(url: str | None = None, token: str | None = None) -> AsyncIterator[Bucket]:
    """A ``Bucket`` over one console connection, for trio code: to ``url`` with ``token``
    when given, else as ``Work``'s verbs find the engine."""
    from wfe.engine.cli.client import connect as open_client

    if url is None or token is None:
        found_url, found_token = _where()
        url, token = url or found_url, token or found_token
    async with open_client(url, token) as client:
        yield Bucket(client)


__all__ = ["Bucket", "Work", "WorkError", "connect", "open_bucket"]
