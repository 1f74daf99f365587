"""The ``tokens`` table: console tokens by name and role, of which only the sha256 is kept.

A name has at most one live (unrevoked) token. Creating and revoking emit ``token.created`` /
``token.revoked`` (subject ``token:NAME``) in the same transaction. The roles and the rules
(names, the bootstrap token, errors) are the console's: ``wfe.engine.console.tokens``.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from wfe.engine.repository.rowtypes import Conn, JsonObject
from wfe.engine.repository.writer import Tx

_COLUMNS = "name, role, created_at, created_by, revoked_at, revoked_by"


@attrs.frozen(kw_only=True)
class TokenRecord:
    """A token as the table holds it (never its secret, nor the secret's digest)."""

    name: str
    role: str  # viewer, operator or admin
    created_at: float
    created_by: str | None
    revoked_at: float | None = None
    revoked_by: str | None = None

    def as_data(self, *, revoked: bool = True) -> JsonObject:
        """JSON-ready data; ``revoked=False`` leaves out the revocation fields."""
        data: JsonObject = {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }
        if revoked:
            data.update(revoked_at=self.revoked_at, revoked_by=self.revoked_by)
        return data


def create_token(
    name: str, role: str, secret_sha256: str, *, by: str
) -> Callable[[Tx], TokenRecord | None]:
    """A write op that stores a live token ``name``; None (nothing written) if one exists."""

    def op(tx: Tx) -> TokenRecord | None:
        if live_role(tx, name) is not None:
            return None
        tx.execute(
            "INSERT INTO tokens (name, role, sha256, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
            (name, role, secret_sha256, tx.at, by),
        )
        tx.emit("token.created", f"token:{name}", {"role": role, "by": by})
        return TokenRecord(name=name, role=role, created_at=tx.at, created_by=by)

    return op


def revoke_token(name: str, *, by: str) -> Callable[[Tx], TokenRecord | None]:
    """A write op that revokes the live token ``name``; None (nothing written) if none is."""

    def op(tx: Tx) -> TokenRecord | None:
        row = tx.execute(
            f"SELECT {_COLUMNS} FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,)
        ).fetchone()
        if row is None:
            return None
        tx.execute(
            "UPDATE tokens SET revoked_at = ?, revoked_by = ? WHERE name = ? AND revoked_at IS NULL",
            (tx.at, by, name),
        )
        tx.emit("token.revoked", f"token:{name}", {"role": row[1], "by": by})
        return TokenRecord(
            name=row[0], role=row[1], created_at=row[2], created_by=row[3],
            revoked_at=tx.at, revoked_by=by,
        )  # fmt: skip

    return op


def live_role(tx: Tx, name: str) -> str | None:
    """The role of the live token ``name``, or None."""
    row = tx.execute(
        "SELECT role FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,)
    ).fetchone()
    return None if row is None else str(row[0])


def list_tokens(*, revoked: bool = False) -> Callable[[Conn], list[TokenRecord]]:
    """A read function: live tokens (and revoked ones too with ``revoked=True``), by name."""

    def fn(conn: Conn) -> list[TokenRecord]:
        where = "" if revoked else "WHERE revoked_at IS NULL"
        rows = conn.execute(f"SELECT {_COLUMNS} FROM tokens {where} ORDER BY name, id").fetchall()
        return [
            TokenRecord(
                name=r[0],
                role=r[1],
                created_at=r[2],
                created_by=r[3],
                revoked_at=r[4],
                revoked_by=r[5],
            )  # fmt: skip
            for r in rows
        ]

    return fn


def token_by_digest(secret_sha256: str) -> Callable[[Conn], tuple[str, str] | None]:
    """A read function: ``(name, role)`` of the live token with that digest, or None."""

    def fn(conn: Conn) -> tuple[str, str] | None:
        row = conn.execute(
            "SELECT name, role FROM tokens WHERE sha256 = ? AND revoked_at IS NULL",
            (secret_sha256,),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    return fn
