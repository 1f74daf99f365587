"""Errors raised by the agent."""

from __future__ import annotations

from wfe.links.errors import LinkConfigError, LinkError, MessageTooLarge


class AgentError(Exception):
    """Base class of every error raised by ``agents``."""


# The transports the agent uses raise these: they are shared with the engine (wfe.links).
__all__ = ["AgentError", "ConfigError", "LinkConfigError", "LinkError", "MessageTooLarge"]


class SpoolError(AgentError, OSError):
    """The spool holds something it cannot read back."""


class SpoolLocked(AgentError):
    """Another agent process holds the spool's lock file."""

    def __init__(self, path: str) -> None:
        super().__init__(f"spool locked: {path}")
        self.path = path


class ConfigError(AgentError, ValueError):
    """An agent configuration (flags or ``agent.toml``) that cannot be used."""
