"""Downloads stream to a file with either client: the weights' sha256 is checked against the version
record (a mismatch leaves no file), and a refusal before the body is retried like any read."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from ltu_client import ApiError

WEIGHTS = b"safetensors-bytes " * 5000


def version(sha256: str) -> dict:
    return {
        "id": "v-2",
        "model_id": "m-1",
        "number": 2,
        "sha256": sha256,
        "size_bytes": len(WEIGHTS),
        "state": "available",
        "current": True,
        "weights_url": "/v1/models/m-1/versions/2/weights",
    }


def test_weights_are_streamed_to_the_file_and_checked(service, tmp_path):
    service.script(
        service.answer(200, version(hashlib.sha256(WEIGHTS).hexdigest())),
        service.problem(503, "database_unavailable", Retry_After="1"),
        httpx.Response(200, content=WEIGHTS),
    )
    dest = service.call("download_weights", "m-1", 2, tmp_path / "out" / "model.safetensors")
    assert dest.read_bytes() == WEIGHTS and service.sleeps == [1.0]
    assert service.requests[-1].url.path == "/v1/models/m-1/versions/2/weights"


def test_a_checksum_mismatch_leaves_no_file(service, tmp_path):
    service.script(service.answer(200, version("0" * 64)), httpx.Response(200, content=WEIGHTS))
    with pytest.raises(ApiError, match="checksum mismatch"):
        service.call("download_weights", "m-1", 2, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()
