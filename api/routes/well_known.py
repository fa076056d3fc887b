"""Public, unauthenticated documents at well-known paths: the certificate signing key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import SignerDep
from api.routes.common import PROBLEM
from api.schemas import CertificateKeyRead
from ltu_client.certificates import public_jwk

router = APIRouter(tags=["certificates"])


@router.get(
    "/.well-known/ltu-certificate-key",
    response_model=CertificateKeyRead,
    responses={200: {"content": {"application/jwk+json": {}}}, 503: PROBLEM},
)
def certificate_key(signer: SignerDep) -> JSONResponse:
    """The public key that verifies erasure certificates, as a JWK (RFC 8037; `kid` = RFC 7638 thumbprint)."""
    return JSONResponse(
        public_jwk(signer.public_key),
        media_type="application/jwk+json",
        headers={"Cache-Control": "public, max-age=3600"},
    )
