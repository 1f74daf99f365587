"""Ed25519 signatures on ``Dispatch`` messages, so an agent runs only what the engine sent.

The engine signs ``canonical_bytes(dispatch)``: the message's wire form (envelope
included, so a signature cannot be replayed as another message type or protocol
version) without ``signature``, as JSON with sorted keys, no whitespace and ASCII only.
Every other field is covered, ``params``, ``limits``, ``attempt`` and ``issued`` too.
The agent calls ``verify``, which also checks that ``sha256`` is the digest of ``script``.
Keys travel as PEM bytes; nothing here reads or writes a file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wfe.protocols.codec import unstructure
from wfe.protocols.errors import ProtocolError
from wfe.protocols.messages import Dispatch


class SignatureRejected(ProtocolError):
    """A dispatch that is unsigned, wrongly signed, or whose script does not match its digest."""


class InvalidKey(ProtocolError, ValueError):
    """PEM bytes that do not hold an Ed25519 key of the kind asked for."""


def script_sha256(script: str) -> str:
    """The hex digest that goes in ``Dispatch.sha256`` for ``script``."""
    return hashlib.sha256(script.encode("utf-8")).hexdigest()


def canonical_bytes(d: Dispatch) -> bytes:
    """The bytes a signature on ``d`` covers: every field but ``signature``, deterministically.

    Raises ``ValueError`` if ``d`` holds a float JSON cannot carry (NaN, infinity).
    """
    obj = unstructure(d)
    del obj["signature"]
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def sign(d: Dispatch, private_key: Ed25519PrivateKey) -> Dispatch:
    """Return a copy of ``d`` carrying a base64 signature by ``private_key``."""
    signature = private_key.sign(canonical_bytes(d))
    return attrs.evolve(d, signature=base64.b64encode(signature).decode("ascii"))


def verify(d: Dispatch, public_key: Ed25519PublicKey) -> None:
    """Check that ``d`` was signed by ``public_key`` and that its script matches ``sha256``.

    Raises ``SignatureRejected`` with a one-line reason naming the attempt.
    """
    name = f"dispatch {d.job_id}#{d.attempt}"
    if d.signature is None:
        raise SignatureRejected(f"{name} is unsigned")
    if script_sha256(d.script) != d.sha256:
        raise SignatureRejected(f"{name}: script sha256 does not match its text")
    try:
        signature = base64.b64decode(d.signature, validate=True)
    except binascii.Error:
        raise SignatureRejected(f"{name}: signature is not valid base64") from None
    try:
        public_key.verify(signature, canonical_bytes(d))
    except (InvalidSignature, ValueError):
        raise SignatureRejected(f"{name}: signature does not verify") from None


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a new ``(private_pem, public_pem)``: unencrypted PKCS#8 and SubjectPublicKeyInfo."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """Parse an unencrypted PEM Ed25519 private key. Raises ``InvalidKey``."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidKey(f"not a PEM private key: {_first_line(exc)}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidKey(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Parse a PEM Ed25519 public key. Raises ``InvalidKey``."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise InvalidKey(f"not a PEM public key: {_first_line(exc)}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidKey(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
