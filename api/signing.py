"""Ed25519 signatures of erasure certificates (the `cryptography` package): the server's signing side.

The file format, the key's JWK and thumbprint, and offline verification live in
ltu_client.certificates, so the service and integrators share one definition; here the content is
rendered as canonical JSON (ledger.canonical) and signed.

The signing key is a PKCS#8 PEM file: LTU_CERTIFICATE_KEY_FILE, or in embedded mode
LTU_HOME/certificate-key.pem, generated on first start. Outside embedded mode no key is ever
generated: without the variable the service serves no certificates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.canonical import canonical_json
from ltu_client.certificates import key_id, signed_document
from ltu_settings import ConfigError, Settings


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
            raise ConfigError(
                f"LTU_CERTIFICATE_KEY_FILE {path}: not a readable unencrypted PEM private key ({exc})"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(
                f"LTU_CERTIFICATE_KEY_FILE {path}: not an Ed25519 key "
                "(make one with: openssl genpkey -algorithm ed25519 -out certificate-key.pem)"
            )
        return cls(key)

    def sign(self, content: dict[str, Any]) -> str:
        """The signed certificate file (canonical JSON, one line)."""
        payload = canonical_json(content)
        return signed_document(payload, kid=self.key_id, signature=self.private_key.sign(payload.encode()))


def _create_key_file(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
