"""Errors raised by the agent."""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error raised by ``agents``."""


class MessageTooLarge(AgentError, ValueError):
    """A message whose encoding exceeds what the transport may carry."""


class SpoolError(AgentError, OSError):
    """The spool holds something it cannot read back."""


class SpoolLocked(AgentError):
    """Another agent process holds the spool's lock file."""

    def __init__(self, path: str) -> None:
        super().__init__(f"spool locked: {path}")
        self.path = path


class ConfigError(AgentError, ValueError):
    """An agent configuration (flags or ``agent.toml``) that cannot be used."""
