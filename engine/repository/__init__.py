"""The repository: SQLite in WAL mode, one writer task with group commit, readers, events."""

from __future__ import annotations

from engine.repository.errors import (
    RepositoryClosed,
    RepositoryError,
    RepositoryFull,
    SchemaTooNew,
)
from engine.repository.events import Event, Missed, Subscription
from engine.repository.repository import Repository, RepositoryStatistics, open_repository
from engine.repository.schema import MIGRATIONS, migrate, schema_version
from engine.repository.space import DiskTrouble
from engine.repository.writer import Tx

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
