"""The repository: SQLite in WAL mode, one writer task with group commit, readers, events."""

from __future__ import annotations

from wfe.engine.repository.errors import (
    RepositoryClosed,
    RepositoryError,
    RepositoryFull,
    SchemaTooNew,
)
from wfe.engine.repository.events import Event, Missed, Subscription
from wfe.engine.repository.repository import Repository, RepositoryStatistics, open_repository
from wfe.engine.repository.schema import MIGRATIONS, migrate, schema_version
from wfe.engine.repository.space import DiskTrouble
from wfe.engine.repository.writer import Tx

__all__ = [
    "MIGRATIONS",
    "DiskTrouble",
    "Event",
    "Missed",
    "Repository",
    "RepositoryClosed",
    "RepositoryError",
    "RepositoryFull",
    "RepositoryStatistics",
    "SchemaTooNew",
    "Subscription",
    "Tx",
    "migrate",
    "open_repository",
    "schema_version",
]
