"""Erasure certificates: their file format and offline verification of their Ed25519 signature.

A certificate file is one line of canonical JSON (RFC 8785):

    {"certificate":{...content...},"signature":{"alg":"Ed25519","key_id":"<kid>","value":"<hex>"}}

`value` is the Ed25519 signature (128 lowercase hex digits) of the bytes of `certificate` as they
stand in the file, which the service writes as the canonical JSON of the content; `key_id` is the
RFC 7638 thumbprint of the public key, which the service publishes as a JWK (RFC 8037) at
/.well-known/ltu-certificate-key. Verification accepts the file only in exactly that form (one
trailing newline aside), so changing any byte of it fails.

    from ltu_client import load_public_key, verify_certificate
    content = verify_certificate(Path("cert.json").read_bytes(), load_public_key(Path("key.jwk").read_text()))

The service signs with `signed_document` from this module, so the envelope has one definition;
verifying needs no JSON canonicaliser, because the signature covers the content's bytes as sent.
Depends on the `cryptography` package only.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ALGORITHM = "Ed25519"
_PREFIX = '{"certificate":'  # canonical JSON sorts "certificate" before "signature"


class CertificateInvalid(ValueError):
    """The certificate does not verify; the message says why."""


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _compact(members: dict[str, str]) -> str:
    # Canonical JSON of an object whose keys and values are plain ASCII strings (no escapes differ).
    return json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _jwk_members(public_key: Ed25519PublicKey) -> dict[str, str]:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}


def key_id(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: base64url SHA-256 of the JWK members crv, kty, x, sorted, without whitespace."""
    return _b64url(hashlib.sha256(_compact(_jwk_members(public_key)).encode()).digest())


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The public key as a JWK (RFC 8037) with its thumbprint as `kid`."""
    return {**_jwk_members(public_key), "kid": key_id(public_key), "alg": "EdDSA", "use": "sig"}


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key from a JWK (as published by the service) or a PEM file; ValueError if it is neither."""
    if text.lstrip().startswith("{"):
        jwk = json.loads(text)
        if (
            not isinstance(jwk, dict)
            or (jwk.get("kty"), jwk.get("crv")) != ("OKP", "Ed25519")
            or not isinstance(jwk.get("x"), str)
        ):
            raise ValueError("the JWK is not an Ed25519 public key (kty OKP, crv Ed25519, x)")
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    key = serialization.load_pem_public_key(text.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the PEM key is not an Ed25519 public key")
    return key


def _suffix(kid: str, value: str) -> str:
    return ',"signature":' + _compact({"alg": ALGORITHM, "key_id": kid, "value": value}) + "}"


def signed_document(payload: str, *, kid: str, signature: bytes) -> str:
    """The certificate file around `payload`, the canonical JSON of the content that `signature` signs."""
    return _PREFIX + payload + _suffix(kid, signature.hex())


def verify_certificate(document: bytes, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The certificate's content if `document` is a certificate signed by `public_key`, else CertificateInvalid."""
    try:
        text = document.decode("utf-8").removesuffix("\n")
        parsed = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CertificateInvalid(f"not a certificate file: {exc}") from None
    if (
        not isinstance(parsed, dict)
        or set(parsed) != {"certificate", "signature"}
        or not isinstance(parsed["certificate"], dict)
        or not isinstance(parsed["signature"], dict)
        or set(parsed["signature"]) != {"alg", "key_id", "value"}
    ):
        raise CertificateInvalid(
            "not a certificate file: expected the members certificate and signature (alg, key_id, value)"
        )
    signature = parsed["signature"]
    if signature["alg"] != ALGORITHM:
        raise CertificateInvalid(f"unsupported signature algorithm {signature['alg']!r}")
    expected_kid = key_id(public_key)
    if signature["key_id"] != expected_kid:
        raise CertificateInvalid(f"signed by key {signature['key_id']!r}, not by the given key {expected_kid!r}")
    value = signature["value"]
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 64 or raw.hex() != value:
        raise CertificateInvalid("the signature value is not 128 lowercase hex digits")
    # With the envelope fixed, the signed payload is what lies between it; a valid signature over
    # those bytes proves the whole file is the one the service wrote, so no canonicaliser is needed.
    suffix = _suffix(expected_kid, value)
    if not (text.startswith(_PREFIX) and text.endswith(suffix)):
        raise CertificateInvalid("the file is not in canonical form: it was altered after signing")
    try:
        public_key.verify(raw, text[len(_PREFIX) : -len(suffix)].encode())
    except InvalidSignature:
        raise CertificateInvalid(
            "the signature does not match the certificate: it was altered or signed by another key"
        ) from None
    return parsed["certificate"]
