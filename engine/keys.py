"""The engine's secrets: the Ed25519 key that signs dispatches, and the console token.

``create_secrets`` writes them for ``wfe init`` with owner-only permissions; the private
key never leaves the engine host (agents get the public key).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import attrs

from wfe.engine.config import Config
from wfe.engine.errors import ConfigError
from wfe.protocols import signing
from wfe.protocols.messages import Dispatch


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable only by its owner (created that way, no window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def create_secrets(config: Config) -> None:
    """Create the signing key pair and the console token if they do not exist."""
    private = config.path(config.engine.private_key)
    public = config.path(config.engine.public_key)
    if not private.exists():
        private_pem, public_pem = signing.generate_keypair()
        write_private(private, private_pem)
        public.write_bytes(public_pem)
    token = config.path(config.api.token_file)
    if not token.exists():
        write_private(token, (secrets.token_urlsafe(32) + "\n").encode())


def load_signer(config: Config) -> Callable[[Dispatch], Dispatch]:
    """Return a function that signs a dispatch with the engine's key (created if missing)."""
    create_secrets(config)
    path = config.path(config.engine.private_key)
    try:
        key = signing.load_private_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load the engine's signing key: {exc}") from None
    # ``issued`` (the engine's wall time at signing) is covered by the signature, so an agent
    # can refuse a captured dispatch replayed later (agents: max_dispatch_age).
    from wfe.engine.runtime.clock import wall_now  # the runtime's; the CLI never signs

    return lambda dispatch: signing.sign(attrs.evolve(dispatch, issued=wall_now()), key)


def read_token(config: Config) -> str:
    """The console token. Raises ``ConfigError`` with the fix if it is missing."""
    path = config.path(config.api.token_file)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no token file (run `wfe init` or start the engine once)"
        ) from None
