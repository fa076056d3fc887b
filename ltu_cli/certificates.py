"""Erasure certificates: `ltu certificate verify`, an offline check of a certificate's Ed25519
signature (ltu_client.certificates), with the public key from a file or fetched from the service."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ltu_cli.common import DEFAULT_URL, CLIError, call, service_url


def register(sub: argparse._SubParsersAction) -> None:
    """Add certificate verify."""
    p = sub.add_parser("certificate", help="erasure certificates")
    cert = p.add_subparsers(dest="certificate_command", required=True, metavar="ACTION")
    c = cert.add_parser("verify", help="check a certificate's Ed25519 signature offline (exit 0 valid, 1 invalid)")
    c.add_argument("file", type=Path, help="the certificate (GET /v1/deletion-requests/{id}/certificate)")
    key_source = c.add_mutually_exclusive_group()
    key_source.add_argument(
        "--public-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the service's public key: the JWK of /.well-known/ltu-certificate-key, or a PEM file",
    )
    key_source.add_argument(
        "--url", default=None, help=f"fetch the public key from this service instead (default LTU_URL or {DEFAULT_URL})"
    )
    c.set_defaults(handler=_certificate_verify)


def _certificate_verify(args: argparse.Namespace) -> int:
    from ltu_client import CertificateInvalid, Client, load_public_key, verify_certificate

    try:
        document = args.file.read_bytes()
        if args.public_key is not None:
            key_text = args.public_key.read_text()
        else:
            with Client(service_url(args.url)) as client:
                key_text = json.dumps(call(client.certificate_key))
        public_key = load_public_key(key_text)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    try:
        content = verify_certificate(document, public_key)
    except CertificateInvalid as exc:
        print(f"ltu certificate verify: INVALID: {exc}", file=sys.stderr)
        return 1
    if "erasure" in content:  # a person's erasure: one request certificate per model, and the dataset purge
        erasure = content["erasure"]
        print(f"valid: certificate of erasure {erasure['id']}, completed {erasure['completed_at']}")
        for part in content["models"]:
            print("  " + _request_line(part))
        for purge in content["dataset_purge"]:
            print(f"  dataset {purge['dataset_id']}: {purge['purged_samples']} of {purge['samples']} samples purged")
    else:
        print(f"valid: erasure certificate of {_request_line(content)}")
    return 0


def _request_line(content: dict) -> str:
    model, request = content["model"], content["request"]
    verdict = "passed" if content["verification"]["passed"] else "failed"
    return (
        f"request {request['id']}, completed {request['completed_at']}; model {model['id']} version "
        f"{model['base_version']['number']} → {model['new_version']['number']} (sha256 "
        f"{model['new_version']['sha256']}); verification {verdict}"
    )
