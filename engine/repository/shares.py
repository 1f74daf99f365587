"""The fair-share identity of a request's jobs: its namespace and user."""

from __future__ import annotations

from collections.abc import Callable

from wfe.engine.repository.rowtypes import Conn


def request_share(request_id: str) -> Callable[[Conn], tuple[str, str]]:
    """``(namespace, user)`` of request ``request_id``; ``("", "")`` when there is none."""

    def fn(conn: Conn) -> tuple[str, str]:
        row = conn.execute(
            "SELECT namespace, user FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        return ("", "") if row is None else (str(row[0]), str(row[1]))

    return fn
