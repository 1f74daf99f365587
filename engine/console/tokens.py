"""Console tokens: named secrets with a role, of which the repository keeps only the sha256.

Roles are ordered ``viewer < operator < admin``: a viewer reads, an operator also changes
things (runs, kills, approves...), an admin also manages tokens. Beside them, below a viewer,
``worker`` is the role of pull workers (``wfe work run``): it may deposit, withdraw, update and
read works (the ops registered with ``workers=True``) and nothing else. ``wfe token create`` makes
a token through the console (admin only) and shows its secret once; ``wfe token revoke``
ends it (and the console closes the connections that use it).

The token file that ``wfe init`` writes (``api.token_file``) is the **bootstrap** admin token,
named ``bootstrap``: it is not in the table and cannot be revoked; to replace it, write a new
file and restart the engine. Secrets are 256 random bits, so a plain sha256 is enough to
store them (no slow hash needed: nothing to guess). The table is read and written through the
``Engine`` (its SQL in ``wfe.engine.repository.tokens``).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import attrs

from wfe.engine.errors import EngineError

#: Finds a live token by its secret's sha256: ``(name, role)`` or None (``Engine.token_by_digest``).
Lookup: TypeAlias = Callable[[str], Awaitable[tuple[str, str] | None]]

BOOTSTRAP = "bootstrap"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")


class TokenError(EngineError, ValueError):
    """A token can't be created or revoked as asked; the message says why."""


class UnknownToken(TokenError, LookupError):
    """No live token has that name."""


class Role(enum.IntEnum):
    """What a token may do; a higher role may do everything a lower one may."""

    WORKER = 0  # deposits, withdraws, updates and reads works; nothing else
    VIEWER = 1  # reads everything, changes nothing
    OPERATOR = 2  # also runs, kills, approves, pauses, resumes, cancels, archives
    ADMIN = 3  # also creates, lists and revokes tokens

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | Role) -> Role:
        """``"viewer"`` -> ``Role.VIEWER``; raises ``TokenError`` naming the known roles."""
        if isinstance(value, Role):
            return value
        try:
            return cls[str(value).upper()]
        except KeyError:
            raise TokenError(
                f"unknown role {value!r}: expected viewer, operator or admin (or worker,"
                " for pull workers)"
            ) from None


@attrs.frozen(kw_only=True)
class Principal:
    """Who is on the other end of a console connection."""

    name: str
    role: Role


def new_secret() -> str:
    """A fresh token secret (``wfe_`` and 43 URL-safe characters)."""
    return "wfe_" + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The sha256 (hex) under which a secret is stored."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """Return ``name`` if it may name a token; raise ``TokenError`` otherwise."""
    if name == BOOTSTRAP:
        raise TokenError(f"token name {BOOTSTRAP!r} is reserved for the token file of `wfe init`")
    if not isinstance(name, str) or not _NAME.match(name):
        raise TokenError(
            f"bad token name {name!r}: 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"
        )
    return name


def name_taken(name: str) -> TokenError:
    """The error for a create under a name that has a live token."""
    return TokenError(f"token {name!r} exists: revoke it first or choose another name")


def no_live_token(name: str) -> UnknownToken:
    """The error for a revoke of a name with no live token."""
    return UnknownToken(f"no live token named {name!r} (see `wfe token list`)")


class Authenticator:
    """Turns a presented secret into a ``Principal``: the bootstrap token, then the table."""

    def __init__(self, lookup: Lookup, bootstrap: str | None) -> None:
        self._lookup = lookup
        self._bootstrap = None if not bootstrap else digest(bootstrap)

    async def authenticate(self, secret: str) -> Principal | None:
        """Return who ``secret`` belongs to, or None for an unknown or revoked token."""
        if not isinstance(secret, str) or not secret or len(secret) > 256:
            return None
        presented = digest(secret)
        if self._bootstrap is not None and hmac.compare_digest(presented, self._bootstrap):
            return Principal(name=BOOTSTRAP, role=Role.ADMIN)
        found = await self._lookup(presented)
        return None if found is None else Principal(name=found[0], role=Role.parse(found[1]))


__all__ = [
    "BOOTSTRAP",
    "Authenticator",
    "Principal",
    "Role",
    "TokenError",
    "UnknownToken",
    "check_name",
    "digest",
    "name_taken",
    "new_secret",
    "no_live_token",
]
