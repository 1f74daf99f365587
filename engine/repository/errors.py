"""Errors raised by the repository. Each message is one line that names the problem."""

from __future__ import annotations

from wfe.engine.errors import EngineError


class RepositoryError(EngineError):
    """The repository cannot do what was asked (bad file, failed transaction, misuse)."""


class SchemaTooNew(RepositoryError):
    """The database was written by a newer wfe than this one; refusing to touch it."""


class RepositoryClosed(RepositoryError):
    """The repository is closed (or its writer stopped); nothing more can be written."""


class RepositoryFull(RepositoryError):
    """The repository cannot commit (its disk is full): new work is refused until it can.

    Writes already queued are not lost: they wait and commit once space returns.
    """
