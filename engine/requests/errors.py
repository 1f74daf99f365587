"""Errors raised while running workflow requests. Each message is one line."""

from __future__ import annotations

from wfe.engine.errors import EngineError


class RequestError(EngineError):
    """Base class: a request, catalog or product operation was refused; nothing changed."""


class UnknownRequest(RequestError, LookupError):
    """No request has that id."""


class UnknownProduct(RequestError, LookupError):
    """No product has that id."""


class RefusedTransition(RequestError):
    """The request's lifecycle does not allow the verb now (or not for this actor).

    The message names the request, the verb and the current state:
    ``request demo-alice-0001: can't pause in state COMPLETED``.
    """


class CatalogError(RequestError, ValueError):
    """A file can't be catalogued (missing, not a regular file, bad metadata)."""


class SubmitError(RequestError, ValueError):
    """A submission is refused before anything is stored (bad script, bad parameter...)."""
