"""Errors raised by the engine. Each message is one line that names the problem."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(EngineError, ValueError):
    """``wfe.toml`` is missing, malformed, or has a bad value."""


class UnknownAction(EngineError, LookupError):
    """No action folder has that name."""


class TaskletError(EngineError):
    """A tasklet file cannot be loaded (syntax error, missing ``main``...)."""


class ActionFailed(EngineError):
    """An action a tasklet waited for ended in failure; the message is the child's error."""


class RScriptFailed(EngineError):
    """An RScript job a tasklet waited for did not succeed."""


class UnknownJob(EngineError, LookupError):
    """No job has that id."""


class JobCancelled(EngineError):
    """The job was cancelled by an operator or by the cancellation of its parent."""
