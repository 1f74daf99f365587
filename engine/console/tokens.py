"""Console tokens: named secrets with a role, of which the repository keeps only the sha256.

Roles are ordered ``viewer < operator < admin``: a viewer reads, an operator also changes
things (runs, kills, approves...), an admin also manages tokens. ``wfe token create`` makes
a token through the console (admin only) and shows its secret once; ``wfe token revoke``
ends it (and the console closes the connections that use it).

The token file that ``wfe init`` writes (``api.token_file``) is the **bootstrap** admin token,
named ``bootstrap``: it is not in the table and cannot be revoked; to replace it, write a new
file and restart the engine. Secrets are 256 random bits, so a plain sha256 is enough to
store them (no slow hash needed: nothing to guess).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from wfe.engine.errors import EngineError

if TYPE_CHECKING:
    from wfe.engine.repository import Repository

BOOTSTRAP = "bootstrap"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")


class TokenError(EngineError, ValueError):
    """A token can't be created or revoked as asked; the message says why."""


class UnknownToken(TokenError, LookupError):
    """No live token has that name."""


class Role(enum.IntEnum):
    """What a token may do; a higher role may do everything a lower one may."""

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
                f"unknown role {value!r}: expected viewer, operator or admin"
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


def create_token(
    name: str, role: Role, secret_sha256: str, *, by: str
) -> Callable[[Any], dict[str, Any]]:
    """A write op that stores a new live token; raises ``TokenError`` if the name is taken."""
    check_name(name)

    def op(tx: Any) -> dict[str, Any]:
        taken = tx.execute(
            "SELECT 1 FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,)
        ).fetchone()
        if taken is not None:
            raise TokenError(f"token {name!r} exists: revoke it first or choose another name")
        tx.execute(
            "INSERT INTO tokens (name, role, sha256, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
            (name, role.label, secret_sha256, tx.at, by),
        )
        tx.emit("token.created", f"token:{name}", {"role": role.label, "by": by})
        return {"name": name, "role": role.label, "created_at": tx.at, "created_by": by}

    return op


def revoke_token(name: str, *, by: str) -> Callable[[Any], dict[str, Any]]:
    """A write op that revokes the live token ``name``; raises ``UnknownToken``."""

    def op(tx: Any) -> dict[str, Any]:
        row = tx.execute(
            "SELECT role FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,)
        ).fetchone()
        if row is None:
            raise UnknownToken(f"no live token named {name!r} (see `wfe token list`)")
        tx.execute(
            "UPDATE tokens SET revoked_at = ?, revoked_by = ? WHERE name = ? AND revoked_at IS NULL",
            (tx.at, by, name),
        )
        tx.emit("token.revoked", f"token:{name}", {"role": row[0], "by": by})
        return {"name": name, "role": row[0], "revoked_at": tx.at, "revoked_by": by}

    return op


def list_tokens(*, revoked: bool = False) -> Callable[[Any], list[dict[str, Any]]]:
    """A read function: live tokens (and revoked ones too with ``revoked=True``), never secrets."""
    keys = ("name", "role", "created_at", "created_by", "revoked_at", "revoked_by")

    def fn(conn: Any) -> list[dict[str, Any]]:
        where = "" if revoked else "WHERE revoked_at IS NULL"
        rows = conn.execute(
            f"SELECT {', '.join(keys)} FROM tokens {where} ORDER BY name, id"
        ).fetchall()
        return [dict(zip(keys, r, strict=True)) for r in rows]

    return fn


def _lookup(secret_sha256: str) -> Callable[[Any], Principal | None]:
    def fn(conn: Any) -> Principal | None:
        row = conn.execute(
            "SELECT name, role FROM tokens WHERE sha256 = ? AND revoked_at IS NULL",
            (secret_sha256,),
        ).fetchone()
        return None if row is None else Principal(name=row[0], role=Role.parse(row[1]))

    return fn


class Authenticator:
    """Turns a presented secret into a ``Principal``: the bootstrap token, then the table."""

    def __init__(self, repo: Repository, bootstrap: str | None) -> None:
        self._repo = repo
        self._bootstrap = None if not bootstrap else digest(bootstrap)

    async def authenticate(self, secret: str) -> Principal | None:
        """Return who ``secret`` belongs to, or None for an unknown or revoked token."""
        if not isinstance(secret, str) or not secret or len(secret) > 256:
            return None
        presented = digest(secret)
        if self._bootstrap is not None and hmac.compare_digest(presented, self._bootstrap):
            return Principal(name=BOOTSTRAP, role=Role.ADMIN)
        return await self._repo.read(_lookup(presented))


__all__ = [
    "BOOTSTRAP",
    "Authenticator",
    "Principal",
    "Role",
    "TokenError",
    "UnknownToken",
    "check_name",
    "create_token",
    "digest",
    "list_tokens",
    "new_secret",
    "revoke_token",
]
