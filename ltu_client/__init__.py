"""A small typed HTTP client for the erasure service (used by `ltu request`, `ltu erasure`, `ltu demo`
and the tests), synchronous or asyncio, retrying 429 and 503 as Retry-After says.

    from ltu_client import Client
    with Client("http://127.0.0.1:8000", api_key="ltu_...") as client:
        request = client.submit_deletion(model_id, subject_ids=["customer-1234"], idempotency_key="ticket-42")
        request = client.wait(request.id)

    from ltu_client import AsyncClient
    async with AsyncClient("http://127.0.0.1:8000", api_key="ltu_...") as client:
        erasure = await client.submit_erasure(["customer-1234"])  # every model and dataset of the tenant
        erasure = await client.wait_erasure(erasure.id)

    from ltu_client import load_public_key, verify_certificate
    content = verify_certificate(certificate_bytes, load_public_key(jwk_text))  # offline, CertificateInvalid if not

Depends on httpx and cryptography only: no torch, no service code.
"""

from ltu_client.certificates import CertificateInvalid, load_public_key, verify_certificate
from ltu_client.client import ApiError, AsyncClient, Client
from ltu_client.models import (
    AuditEvent,
    AuditReferences,
    Dataset,
    DeletionRequest,
    Erasure,
    Model,
    ModelVersion,
    Page,
    RequestSample,
)

__all__ = [
    "ApiError",
    "AsyncClient",
    "AuditEvent",
    "AuditReferences",
    "CertificateInvalid",
    "Client",
    "Dataset",
    "DeletionRequest",
    "Erasure",
    "Model",
    "ModelVersion",
    "Page",
    "RequestSample",
    "load_public_key",
    "verify_certificate",
]
