"""ltu_client's offline certificate verification on its own (no service): a certificate signed in
the documented envelope verifies, with its key as a JWK or PEM, and any flipped byte fails it."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ltu_client import CertificateInvalid, load_public_key, verify_certificate
from ltu_client.certificates import key_id, public_jwk, signed_document

CONTENT = {
    "format": "ltu-erasure-certificate/2",
    "model": {"id": "m-1", "new_version": {"number": 2}},
    "request": {"id": "r-1"},
    "verification": {"passed": True},
}


@pytest.fixture(scope="module")
def signed():
    """(certificate bytes, the signer's public key)."""
    private = Ed25519PrivateKey.generate()
    payload = json.dumps(CONTENT, sort_keys=True, separators=(",", ":"))  # canonical for this plain content
    document = signed_document(payload, kid=key_id(private.public_key()), signature=private.sign(payload.encode()))
    return document.encode(), private.public_key()


def test_a_signed_certificate_verifies_with_the_jwk_or_the_pem(signed):
    document, public = signed
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    for text in (json.dumps(public_jwk(public)), pem):
        assert verify_certificate(document, load_public_key(text)) == CONTENT
    assert verify_certificate(document + b"\n", public) == CONTENT  # an editor's trailing newline is not a change
    assert public_jwk(public)["kid"] == json.loads(document)["signature"]["key_id"]


def test_any_flipped_byte_fails(signed):
    document, public = signed
    for i in range(len(document)):
        for flip in (0x01, 0x20):  # a bit and a case flip at every position
            tampered = document[:i] + bytes([document[i] ^ flip]) + document[i + 1 :]
            with pytest.raises(CertificateInvalid):
                verify_certificate(tampered, public)


def test_another_key_or_a_bad_key_is_refused(signed):
    document, _ = signed
    with pytest.raises(CertificateInvalid, match="signed by key"):
        verify_certificate(document, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ValueError):
        load_public_key('{"kty": "RSA"}')
