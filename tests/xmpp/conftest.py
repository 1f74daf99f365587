"""Fixtures that run a real Prosody on loopback: never a fake server.

- ``prosody``: a plaintext server for the whole session (PLAIN auth over loopback).
- ``prosody_tls``: a server for the whole session that requires STARTTLS with a certificate
  signed by a generated CA (``prosody_tls.ca_path``).
- ``new_account(server)``: registers a fresh account on a server, so tests never share one.
- ``prosody_factory(**options)``: a server of the test's own (its own port, data and options,
  e.g. ``stanza_size_limit``), stopped when the test ends; use it to restart or to break things.

A missing Prosody fails these fixtures with the install hint rather than skipping: CI installs it.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from engine.prosody import ProsodyNotInstalled, ProsodyServer


@attrs.frozen(kw_only=True)
class Account:
    """An account registered on a test Prosody."""

    user: str
    jid: str
    password: str


def _start(directory: Path, **options: Any) -> ProsodyServer:
    try:
        server = ProsodyServer(directory, **options)
    except ProsodyNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    server.start()
    return server


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """A plaintext Prosody on 127.0.0.1 shared by the session; register accounts per test."""
    server = _start(tmp_path_factory.mktemp("prosody"))
    with server:
        yield server


@pytest.fixture(scope="session")
def prosody_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """A Prosody that requires STARTTLS; clients verify it against ``prosody_tls.ca_path``."""
    server = _start(tmp_path_factory.mktemp("prosody-tls"), tls=True)
    with server:
        yield server


@pytest.fixture
def prosody_factory(tmp_path: Path) -> Iterator[Callable[..., ProsodyServer]]:
    """Start servers private to one test, with :class:`ProsodyServer` options; all stop after it."""
    servers: list[ProsodyServer] = []

    def start(**options: Any) -> ProsodyServer:
        server = _start(tmp_path / f"prosody-{len(servers)}", **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


_account_numbers = itertools.count(1)


@pytest.fixture
def new_account() -> Callable[[ProsodyServer], Account]:
    """``new_account(server)`` registers a never-used account (random password) and returns it."""

    def register(server: ProsodyServer) -> Account:
        user = f"user{next(_account_numbers)}-{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(12)
        return Account(user=user, jid=server.register(user, password), password=password)

    return register
