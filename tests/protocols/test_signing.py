"""Ed25519 signatures on Dispatch messages."""

from __future__ import annotations

import base64
import types
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from wfe.protocols.codec import decode, encode
from wfe.protocols.errors import ProtocolError
from wfe.protocols.messages import Dispatch, Limits
from wfe.protocols.signing import (
    InvalidKey,
    SignatureRejected,
    canonical_bytes,
    generate_keypair,
    load_private_key,
    load_public_key,
    script_sha256,
    sign,
    verify,
)

SCRIPT = "#!/bin/sh\n# name: hello\necho hello\n"


@pytest.fixture(scope="module")
def keys() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    private_pem, public_pem = generate_keypair()
    return load_private_key(private_pem), load_public_key(public_pem)


@pytest.fixture
def dispatch() -> Dispatch:
    return Dispatch(
        job_id="j1",
        attempt=1,
        script_name="hello",
        script=SCRIPT,
        sha256=script_sha256(SCRIPT),
        params={"n": 3, "names": ["a", "b"], "nested": {"x": 1.5}},
        limits=Limits(timeout=60.0, memory=2**30),
        issued=1_700_000_000.0,
    )


def test_round_trip(keys: tuple[Ed25519PrivateKey, Ed25519PublicKey], dispatch: Dispatch) -> None:
    """A signed dispatch verifies, also after travelling through encode and decode."""
    private, public = keys
    signed = sign(dispatch, private)
    assert signed.signature is not None
    assert len(base64.b64decode(signed.signature)) == 64
    assert attrs.evolve(signed, signature=None) == dispatch
    verify(signed, public)
    received = decode(encode(signed))
    assert isinstance(received, Dispatch)
    verify(received, public)


@given(data=st.data())
def test_any_dispatch_signs_and_verifies_after_the_wire(
    msgs: types.SimpleNamespace,
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey],
    data: st.DataObject,
) -> None:
    """Canonical bytes survive encode/decode for any dispatch, so signatures do too."""
    private, public = keys
    dispatch = data.draw(msgs.dispatch)
    dispatch = attrs.evolve(dispatch, sha256=script_sha256(dispatch.script))
    received = decode(encode(sign(dispatch, private)))
    assert isinstance(received, Dispatch)
    assert canonical_bytes(received) == canonical_bytes(dispatch)
    verify(received, public)


def test_canonical_bytes_are_sorted_compact_and_leave_out_the_signature(
    dispatch: Dispatch,
) -> None:
    """Canonical bytes ignore the signature and the order params were built in."""
    text = canonical_bytes(dispatch)
    assert b" " not in text.replace(SCRIPT.encode().replace(b"\n", b"\\n"), b"")
    assert b'"signature"' not in text
    assert canonical_bytes(attrs.evolve(dispatch, signature="AAAA")) == text
    reordered = attrs.evolve(dispatch, params=dict(reversed(list(dispatch.params.items()))))
    assert canonical_bytes(reordered) == text
    assert text.index(b'"attempt"') < text.index(b'"job_id"') < text.index(b'"params"')


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"params": {"n": 4, "names": ["a", "b"], "nested": {"x": 1.5}}},
            "signature does not verify",
        ),
        ({"attempt": 2}, "signature does not verify"),
        ({"job_id": "j2"}, "signature does not verify"),
        ({"limits": Limits(timeout=6000.0, memory=2**30)}, "signature does not verify"),
        ({"issued": 1_800_000_000.0}, "signature does not verify"),
        ({"script_name": "other"}, "signature does not verify"),
        ({"script": SCRIPT + "rm -rf ~\n"}, "script sha256 does not match its text"),
        ({"sha256": script_sha256("echo other")}, "script sha256 does not match its text"),
        (
            {"script": "echo evil\n", "sha256": script_sha256("echo evil\n")},
            "signature does not verify",
        ),
    ],
)
def test_tampering_is_rejected(
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey],
    dispatch: Dispatch,
    change: dict[str, Any],
    reason: str,
) -> None:
    """Changing any signed field after signing makes verify refuse, naming the attempt."""
    private, public = keys
    tampered = attrs.evolve(sign(dispatch, private), **change)
    with pytest.raises(SignatureRejected) as info:
        verify(tampered, public)
    name = f"{tampered.job_id}#{tampered.attempt}"
    assert str(info.value) == f"dispatch {name}: {reason}"


def test_unsigned_is_rejected(
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey], dispatch: Dispatch
) -> None:
    """A dispatch without a signature is refused as unsigned."""
    with pytest.raises(SignatureRejected, match=r"^dispatch j1#1 is unsigned$"):
        verify(dispatch, keys[1])


@pytest.mark.parametrize(
    "signature", ["", "not base64!", "AAAA", base64.b64encode(b"x" * 64).decode()]
)
def test_garbage_signature_is_rejected(
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey], dispatch: Dispatch, signature: str
) -> None:
    """A signature that is not base64, the wrong length or simply wrong is refused."""
    with pytest.raises(SignatureRejected, match=r"^dispatch j1#1: signature"):
        verify(attrs.evolve(dispatch, signature=signature), keys[1])


def test_wrong_key_is_rejected(
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey], dispatch: Dispatch
) -> None:
    """A signature by another engine's key does not verify."""
    other_private = load_private_key(generate_keypair()[0])
    signed = sign(dispatch, other_private)
    with pytest.raises(SignatureRejected, match="signature does not verify"):
        verify(signed, keys[1])


def test_signature_rejected_is_a_protocol_error() -> None:
    """Callers can catch every protocol failure with ProtocolError."""
    assert issubclass(SignatureRejected, ProtocolError)
    assert issubclass(InvalidKey, ProtocolError)
    assert issubclass(InvalidKey, ValueError)


def test_generate_keypair_returns_matching_pem() -> None:
    """The pair is PEM bytes, fresh each time, and the halves belong together."""
    private_pem, public_pem = generate_keypair()
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert generate_keypair()[0] != private_pem
    private = load_private_key(private_pem)
    assert (
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == public_pem
    )


def test_loading_the_wrong_kind_of_key_is_refused() -> None:
    """Garbage, a public key where a private one is wanted, or a non-Ed25519 key raise InvalidKey."""
    private_pem, public_pem = generate_keypair()
    with pytest.raises(InvalidKey, match="^not a PEM private key"):
        load_private_key(b"garbage")
    with pytest.raises(InvalidKey, match="^not a PEM private key"):
        load_private_key(public_pem)
    with pytest.raises(InvalidKey, match="^not a PEM public key"):
        load_public_key(private_pem)
    ec_key = generate_private_key(SECP256R1())
    ec_private_pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ec_public_pem = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidKey, match="expected an Ed25519 private key, got"):
        load_private_key(ec_private_pem)
    with pytest.raises(InvalidKey, match="expected an Ed25519 public key, got"):
        load_public_key(ec_public_pem)
