"""Signed erasure certificates: content taken from the ledger, Ed25519 over canonical JSON, offline
verification (`ltu certificate verify`), and any changed byte failing it."""

from __future__ import annotations

import hashlib
import json
import secrets

import pytest

from tests.support import ltu, new_key, problem


@pytest.fixture()
def certificate(completed):
    """(completed request, certificate bytes, public JWK)."""
    return completed, completed.client.certificate(completed.request.id), completed.client.certificate_key()


def test_a_certificate_states_what_was_erased_and_verifies(certificate):
    from ledger.certificates import sample_set_hash
    from ltu_client import load_public_key, verify_certificate

    completed, document, jwk = certificate
    client, request = completed.client, completed.request
    content = verify_certificate(document, load_public_key(json.dumps(jwk)))
    assert content["format"] == "ltu-erasure-certificate/2"
    assert content["request"]["id"] == request.id and content["request"]["completed_on_time"] is True
    assert content["subjects"]["subject_hashes"] == request.subject_hashes
    samples = client.request_samples(request.id)
    assert content["erased_samples"]["count"] == len(samples)
    assert content["erased_samples"]["sha256"] == sample_set_hash([s.sample_id for s in samples])
    versions = {v.number: v.sha256 for v in client.list_versions(completed.model.id)}
    assert content["model"]["base_version"] == {"number": 1, "sha256": versions[1]}
    assert (
        content["model"]["new_version"]
        == {"number": 2, "sha256": versions[2]}
        == {"number": 2, "sha256": request.result_sha256}
    )
    assert content["method"]["requested"] == "ltu" and content["method"]["parameters"] == completed.service.tiny_ltu
    assert content["method"]["executed"] == request.details["run"]["method"] and content["method"]["config"]
    assert {"ua", "ra", "ta", "mia"} <= set(content["metrics"]["before"]) & set(content["metrics"]["after"])
    statement, after = content["verification"]["audit"], request.verification["after"]
    assert statement["tier"] == after["tier"] == "rank" and statement["alpha"] == 0.05 and statement["test"]
    assert statement["outcome"] == after["outcome"] and statement["control_samples"] == after["n_control"] > 0
    assert statement["samples"] == after["n_forget"] and statement["subjects"] == after["n_subjects"] >= 1
    assert [s["p"] for s in statement["subject_p_values"]] == [s["p_remembered"] for s in after["subjects"]]
    assert statement["audit_seed"] == after["audit_seed"] is not None and statement["max_test_drop"] == 5
    measured = statement["measured"]  # quoted from the committed calibration table
    assert measured is not None and len(measured["table_sha256"]) == 64
    assert 0 <= measured["ci_low"] <= measured["false_failure_rate"] <= measured["ci_high"] <= 1
    assert content["verification"]["after"]["forget_mean_rank"] == request.verification["after"]["forget_mean_rank"]
    # The audit events it covers end with the completion, whose chain hash anchors the certificate.
    events = {e.seq: e for e in client.audit_events(request_id=request.id)}
    covered = content["audit"]["sequence_numbers"]
    assert next(events[s].action for s in covered) == "deletion_request.received"
    assert events[covered[-1]].action == "deletion_request.completed" == events[content["audit"]["last_seq"]].action
    assert content["audit"]["last_hash"] == events[covered[-1]].hash
    assert client.verify_audit(to_seq=covered[-1])["last_hash"] == content["audit"]["last_hash"]
    # Deterministic: the same request, the same key, the same bytes.
    assert client.certificate(request.id) == document
    assert jwk["kid"] == json.loads(document)["signature"]["key_id"]


def test_changing_any_byte_fails_verification(certificate):
    from ltu_client import CertificateInvalid, load_public_key, verify_certificate

    _, document, jwk = certificate
    key = load_public_key(json.dumps(jwk))
    assert verify_certificate(document + b"\n", key)  # a trailing newline (an editor's) is not a change
    failures = set()
    for i in range(len(document)):
        for flip in (0x01, 0x20):  # a bit and a case flip at every position
            tampered = document[:i] + bytes([document[i] ^ flip]) + document[i + 1 :]
            with pytest.raises(CertificateInvalid) as err:
                verify_certificate(tampered, key)
            failures.add(str(err.value).split(":")[0])
    assert len(failures) > 3  # broken JSON, non-canonical form, wrong key id, bad signature, ...
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with pytest.raises(CertificateInvalid, match="signed by key"):
        verify_certificate(document, Ed25519PrivateKey.generate().public_key())


def test_ltu_certificate_verify_offline_and_from_the_service(certificate, tmp_path, capsys, monkeypatch):
    from cryptography.hazmat.primitives import serialization

    from ltu_cli.demo import start_server
    from ltu_client import load_public_key

    completed, document, jwk = certificate
    (tmp_path / "cert.json").write_bytes(document)
    (tmp_path / "key.jwk").write_text(json.dumps(jwk))
    pem = load_public_key(json.dumps(jwk)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    for key_file in ("key.jwk", "key.pem"):
        assert ltu("certificate", "verify", str(tmp_path / "cert.json"), "--public-key", str(tmp_path / key_file)) == 0
        assert f"valid: erasure certificate of request {completed.request.id}" in capsys.readouterr().out
    middle = len(document) // 2
    (tmp_path / "tampered.json").write_bytes(document[:middle] + bytes([document[middle] ^ 1]) + document[middle + 1 :])
    assert ltu("certificate", "verify", str(tmp_path / "tampered.json"), "--public-key", str(tmp_path / "key.jwk")) == 1
    assert "INVALID" in capsys.readouterr().err
    # User errors: exit 2 with one line.
    assert ltu("certificate", "verify", str(tmp_path / "missing.json"), "--public-key", str(tmp_path / "key.jwk")) == 2
    (tmp_path / "junk.pem").write_text("not a key")
    assert ltu("certificate", "verify", str(tmp_path / "cert.json"), "--public-key", str(tmp_path / "junk.pem")) == 2
    capsys.readouterr()

    # --url: the key comes from the service's well-known path.
    server, thread, url = start_server(completed.service.app, 0)
    try:
        assert ltu("certificate", "verify", str(tmp_path / "cert.json"), "--url", url) == 0
        monkeypatch.setenv("LTU_URL", url)
        assert ltu("certificate", "verify", str(tmp_path / "tampered.json")) == 1
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_certificate_failure_paths(completed, artifacts):
    service, client = completed.service, completed.client
    open_request = client.submit_deletion(completed.model.id, subject_ids=[artifacts.subject_with_train_samples(1)])
    body = problem(
        service.http.get(f"/v1/deletion-requests/{open_request.id}/certificate", headers=client.headers), 409
    )
    assert "only completed requests" in body["detail"]
    problem(service.http.get("/v1/deletion-requests/no-such-id/certificate", headers=client.headers), 404)
    path = f"/v1/deletion-requests/{completed.request.id}/certificate"
    other = new_key(service, scopes=["admin"], tenant="acme")
    problem(service.http.get(path, headers={"Authorization": f"Bearer {other}"}), 404)
    problem(service.http.get(path), 401)
    for scopes in (["read"], ["submit"], ["audit"]):
        key = new_key(service, scopes=scopes)
        assert service.http.get(path, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_the_signing_key_is_generated_once_in_embedded_mode_and_never_elsewhere(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.signing import Signer
    from ltu_settings import ConfigError, Settings

    postgres_url = "postgresql+psycopg://ltu@127.0.0.1:9/never-connected"  # the key route needs no database
    embedded = Settings.from_env({"LTU_HOME": str(tmp_path / "home")})
    first, second = Signer.from_settings(embedded), Signer.from_settings(embedded)
    assert first.key_id == second.key_id
    assert (tmp_path / "home" / "certificate-key.pem").stat().st_mode & 0o077 == 0

    deployed = Settings.build(home=tmp_path, database_url=postgres_url, secret_key=secrets.token_urlsafe(48))
    assert deployed.signing_key_path is None and Signer.from_settings(deployed) is None
    with TestClient(create_app(deployed)) as http:
        body = problem(http.get("/.well-known/ltu-certificate-key"), 503)
        assert body["code"] == "certificate_key_missing" and "LTU_CERTIFICATE_KEY_FILE" in body["detail"]
    with pytest.raises(ConfigError, match="not a readable"):
        Signer.from_settings(deployed.replace(certificate_key_file=tmp_path / "absent.pem"))
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        Signer.from_settings(deployed.replace(certificate_key_file=ec_key))
    configured = Settings.from_env(
        {
            "LTU_HOME": str(tmp_path / "h2"),
            "LTU_DATABASE_URL": postgres_url,
            "LTU_SECRET_KEY": secrets.token_urlsafe(48),
            "LTU_CERTIFICATE_KEY_FILE": str(tmp_path / "home" / "certificate-key.pem"),
        }
    )
    assert Signer.from_settings(configured).key_id == first.key_id


def test_the_public_key_is_a_jwk_with_its_thumbprint(api):
    import base64

    answer = api.http.get("/.well-known/ltu-certificate-key")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/jwk+json"
    jwk = answer.json()
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    members = json.dumps({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}, separators=(",", ":"), sort_keys=True)
    assert jwk["kid"] == base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).decode().rstrip("=")


def test_the_service_signs_what_an_integrator_verifies(tmp_path):
    # No erasure needed: the server's Signer and ltu_client's verification agree on the envelope,
    # for content with every kind of value canonical JSON renders (non-ASCII, floats, nesting).
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from api.signing import Signer
    from ltu_client import CertificateInvalid, load_public_key, verify_certificate
    from ltu_client.certificates import public_jwk

    signer = Signer(Ed25519PrivateKey.generate())
    content = {
        "format": "ltu-erasure-certificate/2",
        "subject": "Zoë €",
        "metrics": {"ta": 97.25, "mia": 1e-7},
        "audit": {"sequence_numbers": [1, 2, 3]},
        "passed": True,
        "note": None,
    }
    document = signer.sign(content).encode()
    key = load_public_key(json.dumps(public_jwk(signer.public_key)))
    assert verify_certificate(document, key) == content
    assert json.loads(document)["signature"]["key_id"] == signer.key_id
    with pytest.raises(CertificateInvalid, match="not in canonical form"):
        verify_certificate(json.dumps(json.loads(document)).encode(), key)  # the same JSON, re-spaced
