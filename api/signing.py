"""Ed25519 signatures of erasure certificates (the `cryptography` package), and their verification.

A certificate file is one line of canonical JSON (ledger.canonical):

    {"certificate":{...content...},"signature":{"alg":"Ed25519","key_id":"<kid>","value":"<hex>"}}

`value` is the Ed25519 signature (128 lowercase hex digits) of the canonical JSON of
`certificate`; `key_id` is the RFC 7638 thumbprint of the public key, which the service
publishes as a JWK (RFC 8037) at /.well-known/ltu-certificate-key. Verification accepts the file
only in exactly that form (one trailing newline aside), so changing any byte of it fails.

The signing key is a PKCS#8 PEM file: LTU_CERTIFICATE_KEY_FILE, or in embedded mode
LTU_HOME/certificate-key.pem, generated on first start. Outside embedded mode no key is ever
generated: without the variable the service serves no certificates.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.canonical import canonical_json
from ledger.settings import ConfigError, Settings

ALGORITHM = "Ed25519"


class CertificateInvalid(ValueError):
    """The certificate does not verify; the message says why."""


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _jwk_members(public_key: Ed25519PublicKey) -> dict[str, str]:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}


def key_id(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: base64url SHA-256 of the canonical JWK members crv, kty, x."""
    return _b64url(hashlib.sha256(canonical_json(_jwk_members(public_key)).encode()).digest())


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The public key as a JWK (RFC 8037) with its thumbprint as `kid`."""
    return {**_jwk_members(public_key), "kid": key_id(public_key), "alg": "EdDSA", "use": "sig"}


class Signer:
    """Signs certificate contents with one Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer | None:
        """The configured key (generated in embedded mode); None when none is configured; ConfigError if unusable."""
        path = settings.signing_key_path
        if path is None:
            return None
        if not path.is_file() and settings.dev_mode:
            _create_key_file(path)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"LTU_CERTIFICATE_KEY_FILE {path}: not a readable unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"LTU_CERTIFICATE_KEY_FILE {path}: not an Ed25519 key "
                              "(make one with: openssl genpkey -algorithm ed25519 -out certificate-key.pem)")
        return cls(key)

    def sign(self, content: dict[str, Any]) -> str:
        """The signed certificate file (canonical JSON, one line)."""
        signature = self.private_key.sign(canonical_json(content).encode())
        return canonical_json({"certificate": content,
                               "signature": {"alg": ALGORITHM, "key_id": self.key_id, "value": signature.hex()}})


def _create_key_file(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key from a JWK (as published by the service) or a PEM file; ValueError if it is neither."""
    if text.lstrip().startswith("{"):
        jwk = json.loads(text)
        if not isinstance(jwk, dict) or (jwk.get("kty"), jwk.get("crv")) != ("OKP", "Ed25519") \
                or not isinstance(jwk.get("x"), str):
            raise ValueError("the JWK is not an Ed25519 public key (kty OKP, crv Ed25519, x)")
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    key = serialization.load_pem_public_key(text.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the PEM key is not an Ed25519 public key")
    return key


def verify_certificate(document: bytes, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The certificate's content if `document` is a certificate signed by `public_key`, else CertificateInvalid."""
    try:
        text = document.decode("utf-8").removesuffix("\n")
        parsed = json.loads(text)
        canonical = canonical_json(parsed)
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        raise CertificateInvalid(f"not a certificate file: {exc}") from None
    if not isinstance(parsed, dict) or set(parsed) != {"certificate", "signature"} \
            or not isinstance(parsed["certificate"], dict) or not isinstance(parsed["signature"], dict) \
            or set(parsed["signature"]) != {"alg", "key_id", "value"}:
        raise CertificateInvalid("not a certificate file: expected the members certificate and signature (alg, key_id, value)")
    if canonical != text:
        raise CertificateInvalid("the file is not in canonical form: it was altered after signing")
    signature = parsed["signature"]
    if signature["alg"] != ALGORITHM:
        raise CertificateInvalid(f"unsupported signature algorithm {signature['alg']!r}")
    if signature["key_id"] != key_id(public_key):
        raise CertificateInvalid(f"signed by key {signature['key_id']!r}, not by the given key {key_id(public_key)!r}")
    value = signature["value"]
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 64 or raw.hex() != value:
        raise CertificateInvalid("the signature value is not 128 lowercase hex digits")
    try:
        public_key.verify(raw, canonical_json(parsed["certificate"]).encode())
    except InvalidSignature:
        raise CertificateInvalid("the signature does not match the certificate: it was altered or signed by another key") from None
    return parsed["certificate"]
