"""The edge, black-box: hostile input replayed over HTTP against two real `ltu serve` processes, one on
SQLite and one on a fresh Postgres database, each answer compared across the two.

What must hold for every probe: a 4xx problem+json with an X-Request-ID, the same status and `code`
on both ledgers (where a code is expected, that one), and the keep-alive connection survives: the
next request on the same connection succeeds. The probes are those of issue 13 (non-finite numbers,
lone surrogates, deep nesting, NUL characters, Range, strict types, a re-submitted erasure, the
audit summary's model filter, hostile uploads, a forged dashboard cookie) and variants of each; a
malformed Content-Length, which never reaches the app, is checked on a raw socket.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import ADMIN_KEY, PROBLEM, REPO, TINY_LTU, Process, free_port, wait_until

NESTED_900 = "[" * 900 + "]" * 900
# Framing h11 refuses: uvicorn answers before the app runs (on a connection it then closes).
MALFORMED_FRAMING = (b"Content-Length: -5", b"Content-Length: 5, 6", b"no colon in this header line")
SEE_OTHER = 303  # the dashboard's answer to a session it did not make: back to its sign-in form


@dataclass
class Server:
    """One `ltu serve` and what the probes aim at on it."""

    name: str
    process: Process
    env: dict[str, str]
    url: str
    http: httpx.Client | None = None
    model_id: str = ""
    dataset_id: str = ""
    request_id: str = ""  # completed: it erased `erased_subject`
    erased_sample: str = ""
    other_tenant_key: str = ""

    def cli(self, *argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ltu_cli.main", *argv], env=self.env, cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]


def start(name: str, root: Path, database_url: str | None) -> Server:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    root.mkdir(parents=True)
    key = root / "certificate-key.pem"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LTU_")},
        "LTU_HOME": str(root),
        "LTU_SECRET_KEY": secrets.token_urlsafe(48),
        "LTU_ADMIN_API_KEY": ADMIN_KEY,
        "LTU_CERTIFICATE_KEY_FILE": str(key),
        "LTU_AUDIT_REFERENCE_MODELS": "0",
        "LTU_DEVICE": "cpu",
        "LTU_TORCH_THREADS": "1",
        "LTU_COALESCE_WINDOW_SECONDS": "0",
        "LTU_LOG_FORMAT": "text",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **({"LTU_DATABASE_URL": database_url} if database_url else {}),
    }
    command = [sys.executable, "-m", "ltu_cli.main", "serve", "--port", str(port)]
    return Server(name, Process(name, command, env, root / "serve.log"), env, f"http://127.0.0.1:{port}")


def wait_healthy(server: Server) -> None:
    def healthy() -> bool:
        assert server.process.alive(), f"{server.name}: ltu serve exited:\n{server.process.output()}"
        try:
            return httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout=90, what=f"ltu serve on {server.name} to answer", context=server.process.output)


def prepare(server: Server, artifacts) -> None:
    """Register the dataset and model, and submit the erasure that the re-submission probes repeat."""
    from ltu_client import Client

    client = Client(server.url, ADMIN_KEY, timeout=60)
    dataset = client.register_dataset(artifacts.archive)
    model = client.register_model(artifacts.weights, dataset_id=dataset.id, recipe=artifacts.recipe)
    request = client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples()], parameters=dict(TINY_LTU)
    )
    server.dataset_id, server.model_id, server.request_id = dataset.id, model.id, request.id
    server.other_tenant_key = server.cli("keys", "create", "--tenant", "acme", "--scopes", "audit,read")


def wait_erased(server: Server) -> None:
    from ltu_client import Client

    client = Client(server.url, ADMIN_KEY, timeout=60)

    def finished():
        request = client.get_request(server.request_id)
        return request if request.status in ("completed", "failed", "cancelled") else None

    done = wait_until(finished, timeout=180, what=f"the erasure on {server.name}", context=server.process.output)
    assert done.status == "completed", done.error
    samples = client.request_samples(server.request_id)
    server.erased_sample = next(s.sample_id for s in samples if s.split == "train")


@pytest.fixture()
def servers(tmp_path, fresh_postgres_url, artifacts) -> Iterator[list[Server]]:
    both = [start("sqlite", tmp_path / "sqlite", None), start("postgres", tmp_path / "postgres", fresh_postgres_url)]
    try:
        for server in both:
            wait_healthy(server)
        for server in both:
            prepare(server, artifacts)
        for server in both:
            wait_erased(server)
            server.http = httpx.Client(base_url=server.url, headers=admin(), timeout=60)
        yield both
    finally:
        for server in both:
            if server.http is not None:
                server.http.close()
            server.process.stop()


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


# --- the probes ------------------------------------------------------------------------------------

Build = Callable[[Server, object], httpx.Request]


@dataclass(frozen=True)
class Probe:
    name: str
    build: Build
    code: str | None  # None: another engineer's fix in flight; any 4xx problem+json, the same on both ledgers
    also: frozenset[int] = frozenset()  # other statuses that are a right answer (the dashboard's redirect)


def json_post(path: str | Callable[[Server], str], text: Callable[[Server], str]) -> Build:
    """A POST of raw JSON text (httpx cannot encode a lone surrogate or NaN itself)."""

    def build(server: Server, artifacts) -> httpx.Request:
        target = path(server) if callable(path) else path
        return server.http.build_request(
            "POST", target, content=text(server).encode(), headers={"Content-Type": "application/json"}
        )

    return build


def erasure(fields: Callable[[Server], str]) -> Build:
    """POST /v1/deletion-requests for the server's model with `fields` (raw JSON members) added."""
    return json_post("/v1/deletion-requests", lambda s: f'{{"model_id": "{s.model_id}", {fields(s)}}}')


def parameters(raw: str) -> Build:
    return erasure(lambda s: f'"subject_ids": ["someone"], "parameters": {raw}')


def extension(raw: str) -> Build:
    return json_post(lambda s: f"/v1/deletion-requests/{s.request_id}/deadline-extension", lambda s: raw)


def get(path: Callable[[Server], str], **headers: str) -> Build:
    return lambda server, artifacts: server.http.build_request("GET", path(server), headers=headers)


def form(path: str, fields: dict[str, str], upload: tuple[str, Callable[[object], bytes]]) -> Build:
    field, payload = upload

    def build(server: Server, artifacts) -> httpx.Request:
        data = {"dataset_id": server.dataset_id, **fields} if path == "/v1/models" else fields
        return server.http.build_request("POST", path, data=data, files={field: ("upload", payload(artifacts))})

    return build


def weights(artifacts) -> bytes:
    return artifacts.weights.read_bytes()


def archive(artifacts) -> bytes:
    return artifacts.archive.read_bytes()


def dataset_upload(payload: Callable[[object], bytes]) -> Build:
    return form("/v1/datasets", {}, ("archive", payload))


def model_upload(payload: Callable[[object], bytes], **fields: str) -> Build:
    return form("/v1/models", fields, ("weights", payload))


def rebuilt_archive(artifacts, replace: dict[str, bytes], sparse: str | None = None) -> bytes:
    """The test archive with some members' contents replaced, one of them typed as a GNU sparse file."""
    out = io.BytesIO()
    with (
        tarfile.open(artifacts.archive) as source,
        tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for member in source.getmembers():
            data = replace.get(member.name, source.extractfile(member).read())
            member.size = len(data)
            if member.name == sparse:
                member.type = tarfile.GNUTYPE_SPARSE
            tar.addfile(member, io.BytesIO(data))
    return out.getvalue()


def samples_with_nul(artifacts) -> bytes:
    with tarfile.open(artifacts.archive) as source:
        lines = source.extractfile("samples.csv").read().decode().splitlines()
    first = lines[1].split(",")
    lines[1] = ",".join([first[0] + "\x00", *first[1:]])
    return rebuilt_archive(artifacts, {"samples.csv": ("\n".join(lines) + "\n").encode()})


def safetensors_with(artifacts, edit: Callable[[dict], dict]) -> bytes:
    """The test weights with their safetensors header rewritten by `edit`."""
    raw = artifacts.weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.dumps(edit(json.loads(raw[8 : 8 + length]))).encode()
    return struct.pack("<Q", len(header)) + header + raw[8 + length :]


def with_checkpoint_path(header: dict) -> dict:
    arch = json.loads(header["__metadata__"]["arch"])
    arch["kwargs"] = {"checkpoint_path": "/etc/passwd"}
    header["__metadata__"]["arch"] = json.dumps(arch)
    return header


def nested_header(artifacts) -> bytes:
    header = '{"deep": ' + NESTED_900 + "}"
    return struct.pack("<Q", len(header)) + header.encode()


def forged_cookie(server: Server, artifacts) -> httpx.Request:
    # An expiry of "²" (byte 0xB2, read as Latin-1), which str.isdigit() admits and int() refuses; no Bearer key.
    cookie = f"ltu_dashboard=k.\u00b2.{'0' * 64}".encode("latin-1")
    return httpx.Request("GET", f"{server.url}/dashboard", headers={"Cookie": cookie})


PROBES = [
    # issue 13, item 1, and what else has no canonical JSON form
    Probe("parameters lr 1e400", parameters('{"lr": 1e400}'), "non_finite_number"),
    Probe("parameters NaN", parameters('{"lr": NaN}'), "non_finite_number"),
    Probe("parameters -Infinity", parameters('{"lr": -Infinity}'), "non_finite_number"),
    Probe("parameters 2^53 + 1", parameters('{"seed": 9007199254740993}'), "integer_out_of_range"),
    Probe("parameters 5000 digits", parameters('{"seed": ' + "9" * 5000 + "}"), "integer_out_of_range"),
    Probe("recipe lr 1e400", model_upload(weights, recipe='{"lr": 1e400}'), "non_finite_number"),
    # item 2: lone surrogates
    Probe("subject_ids lone surrogate", erasure(lambda s: '"subject_ids": ["\\ud800"]'), "lone_surrogate"),
    Probe("sample_ids lone surrogate", erasure(lambda s: '"sample_ids": ["\\ud800"]'), "lone_surrogate"),
    Probe("parameters value lone surrogate", parameters('{"x": "\\udfff"}'), "lone_surrogate"),
    Probe("parameters key lone surrogate", parameters('{"\\ud800": 1}'), "lone_surrogate"),
    Probe("unknown field lone surrogate", erasure(lambda s: '"subject_ids": ["a"], "\\udc00": 1'), "lone_surrogate"),
    # item 3: nesting
    Probe("parameters nested 900 deep", parameters('{"a": ' + NESTED_900 + "}"), "nesting_too_deep"),
    Probe("parameters nested 5000 deep", parameters("[" * 5000 + "]" * 5000), "nesting_too_deep"),
    Probe(
        "manifest nested 900 deep",
        dataset_upload(lambda a: rebuilt_archive(a, {"manifest.json": NESTED_900.encode()})),
        None,
    ),
    Probe("safetensors header nested 900 deep", model_upload(nested_header), None),
    # item 4: NUL, in every kind of input
    Probe(
        "api key name NUL",
        json_post("/v1/api-keys", lambda s: '{"name": "a\\u0000b", "scopes": ["read"]}'),
        "nul_character",
    ),
    Probe("subject id NUL", erasure(lambda s: '"subject_ids": ["a\\u0000"]'), "nul_character"),
    Probe("extension reason NUL", extension('{"months": 1, "reason": "a\\u0000"}'), "nul_character"),
    Probe("dataset name NUL", form("/v1/datasets", {"name": "a\x00b"}, ("archive", archive)), "nul_character"),
    Probe("model name NUL", model_upload(weights, name="a\x00b"), "nul_character"),
    Probe("model_id=%00 filter", get(lambda s: "/v1/deletion-requests?model_id=%00"), "nul_character"),
    Probe("audit action=%00 filter", get(lambda s: "/v1/audit/events?action=%00"), "nul_character"),
    Probe("model id %00 in the path", get(lambda s: "/v1/models/%00"), "nul_character"),
    Probe("dataset id %00 in the path", get(lambda s: "/v1/datasets/a%00b"), "nul_character"),
    Probe("samples.csv sample id NUL", dataset_upload(samples_with_nul), None),
    # item 5: Range, strict types, the erased subject, the summary's model filter
    Probe(
        "Range past the end",
        get(lambda s: f"/v1/models/{s.model_id}/versions/1/weights", Range="bytes=999999999-"),
        "range_not_satisfiable",
    ),
    Probe(
        "Range bytes=abc",
        get(lambda s: f"/v1/models/{s.model_id}/versions/1/weights", Range="bytes=abc"),
        "invalid_range",
    ),
    Probe(
        "Range end before start",
        get(lambda s: f"/v1/models/{s.model_id}/versions/1/weights", Range="bytes=9-2"),
        "invalid_range",
    ),
    Probe(
        "Range in other units",
        get(lambda s: f"/v1/models/{s.model_id}/versions/1/weights", Range="items=0-1"),
        "invalid_range",
    ),
    Probe("model name empty", model_upload(weights, name=""), "validation_error"),
    Probe("months true", extension('{"months": true, "reason": "r"}'), "validation_error"),
    Probe('months "1"', extension('{"months": "1", "reason": "r"}'), "validation_error"),
    Probe("months 1.0", extension('{"months": 1.0, "reason": "r"}'), "validation_error"),
    Probe(
        'count "4"',
        json_post(lambda s: f"/v1/models/{s.model_id}/audit-references", lambda s: '{"count": "4"}'),
        "validation_error",
    ),
    Probe(
        "erased subject again",
        lambda s, a: s.http.build_request(
            "POST",
            "/v1/deletion-requests",
            json={"model_id": s.model_id, "subject_ids": [a.subject_with_train_samples()]},
        ),
        "already_erased",
    ),
    Probe(
        "erased sample again",
        lambda s, a: s.http.build_request(
            "POST", "/v1/deletion-requests", json={"model_id": s.model_id, "sample_ids": [s.erased_sample]}
        ),
        "already_erased",
    ),
    Probe("summary of an unknown model", get(lambda s: "/v1/audit/summary?model_id=no-such-model"), "not_found"),
    Probe("summary of an unknown tenant", get(lambda s: "/v1/audit/summary?tenant_id=no-such-tenant"), "not_found"),
    Probe(
        "summary of another tenant's model",
        lambda s, a: s.http.build_request(
            "GET",
            "/v1/audit/summary",
            params={"model_id": s.model_id},
            headers={"Authorization": f"Bearer {s.other_tenant_key}"},
        ),
        "not_found",
    ),
    # uploads and the dashboard (other engineers' fixes)
    Probe("tar with a GNU sparse member", dataset_upload(lambda a: rebuilt_archive(a, {}, sparse="images.u8")), None),
    Probe("arch.kwargs checkpoint_path", model_upload(lambda a: safetensors_with(a, with_checkpoint_path)), None),
    Probe("dashboard cookie expiry ²", forged_cookie, None, also=frozenset({SEE_OTHER})),
]


def local_address(response: httpx.Response):
    """The client end of the connection that carried `response`; None once that connection is closed."""
    try:
        return response.extensions["network_stream"].get_extra_info("client_addr")
    except OSError:
        return None


def answer(server: Server, probe: Probe, artifacts) -> tuple[int, str | None, list[str]]:
    """(status, code, what is wrong with the answer) of one probe, and of the request after it."""
    wrong = []
    try:
        response = server.http.send(probe.build(server, artifacts))
    except httpx.TransportError as exc:
        return 0, None, [f"no answer: {exc!r}"]
    connection = local_address(response)
    body = response.json() if response.headers.get("content-type", "").startswith(PROBLEM) else None
    if response.status_code not in probe.also:
        if not 400 <= response.status_code < 500 or body is None:
            wrong.append(f"{response.status_code} {response.headers.get('content-type')}: {response.text[:200]}")
        if "x-request-id" not in response.headers:
            wrong.append("no X-Request-ID")
    try:
        after = server.http.get("/v1/models", params={"limit": 1})
    except httpx.TransportError as exc:  # the server dropped the connection it had answered on
        wrong.append(f"the next request on the connection failed: {exc!r}")
    else:
        if after.status_code != 200 or connection is None or local_address(after) != connection:
            wrong.append(f"the keep-alive connection did not survive (next answer {after.status_code})")
    return response.status_code, (body or {}).get("code"), wrong


def test_every_probe_gets_the_same_4xx_problem_on_sqlite_and_postgres(servers, artifacts):
    failures = []
    for probe in PROBES:
        answers = {server.name: answer(server, probe, artifacts) for server in servers}
        sqlite, postgres = answers["sqlite"], answers["postgres"]
        problems = [f"{name}: {w}" for name, (_, _, wrong) in answers.items() for w in wrong]
        if sqlite[:2] != postgres[:2]:
            problems.append(f"the ledgers disagree: sqlite {sqlite[:2]}, postgres {postgres[:2]}")
        if probe.code is not None and sqlite[1] != probe.code:
            problems.append(f"code {sqlite[1]!r}, expected {probe.code!r}")
        if problems:
            failures.append(f"{probe.name}: " + "; ".join(problems))
    for framing in MALFORMED_FRAMING:
        answers = {server.name: malformed(server, framing) for server in servers}
        if set(answers.values()) != {(400, "malformed_request", True)}:
            failures.append(f"{framing!r}: (status, code, X-Request-ID) {answers}")
    assert not failures, "\n".join(failures)


def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client would, and read the answer until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def malformed(server: Server, framing: bytes) -> tuple[int, str | None, bool]:
    """(status, code, whether it has an X-Request-ID) of a request whose framing h11 refuses before the app."""
    status, headers, body = raw_exchange(
        server.url, b"POST /v1/deletion-requests HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\nhello"
    )
    code = json.loads(body).get("code") if headers.get("content-type") == PROBLEM else None
    return status, code, bool(headers.get("x-request-id"))
