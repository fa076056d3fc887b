"""Keyed hashes: subject ids and request bodies are stored only as HMAC-SHA256 under the tenant's key.

A plain SHA-256 of a low-entropy identifier (an e-mail, a customer number) can be reversed by
guessing; an HMAC cannot without the key. The key is the tenant's own (ledger.tenant_keys), so the
same person hashes differently in two tenants. API keys are high-entropy random strings, so a
plain SHA-256 suffices for them (and survives a rotation of the server secret).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any


def subject_hash(key: bytes, subject_id: str) -> str:
    """Keyed hash of a data subject id (64 hex characters)."""
    return hmac.new(key, b"subject:" + subject_id.encode(), hashlib.sha256).hexdigest()


def body_hash(key: bytes, body: Any) -> str:
    """Keyed hash of a JSON-ready body in canonical form (sorted keys, no whitespace)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, b"body:" + canonical.encode(), hashlib.sha256).hexdigest()


def key_hash(api_key: str) -> str:
    """SHA-256 of an API key secret."""
    return hashlib.sha256(api_key.encode()).hexdigest()
