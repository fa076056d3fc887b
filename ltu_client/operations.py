"""Every operation of the service once, as a generator of protocol steps (see ltu_client.protocol).

`Client` and `AsyncClient` subclass `Operations` and turn each `@operation` into a method of theirs
that performs the steps, synchronously or awaited; their methods take the arguments documented here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
from ltu_client.protocol import ApiError, Call, RetryPolicy, Sleep, Steps, Upload, exchange, retry_after

T = TypeVar("T")

MAX_POLL = 2.0  # seconds between polls at most while waiting for a job, whatever Retry-After says


def operation(steps: Callable[..., Steps[Any]]) -> Callable[..., Steps[Any]]:
    """Mark a generator method as an operation the clients expose."""
    steps.is_operation = True  # type: ignore[attr-defined]
    return steps


class Operations:
    """The operations, the API key and the retry policy, shared by the sync and the async client.

    A subclass names `driver`, which makes one of its methods out of an operation.
    """

    def __init_subclass__(cls, *, driver: Callable[[Callable[..., Steps[Any]]], Callable[..., Any]], **kwargs):
        super().__init_subclass__(**kwargs)
        for name, value in vars(Operations).items():
            if getattr(value, "is_operation", False):
                method = driver(value)
                method.__qualname__ = f"{cls.__qualname__}.{name}"
                setattr(cls, name, method)

    def __init__(self, api_key: str | None, *, max_attempts: int, max_wait: float) -> None:
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retry = RetryPolicy(attempts=max_attempts, max_wait=max_wait)

    def _call(self, call: Call, into: Path | None = None) -> Steps[Any]:
        return (yield from exchange(call, self.retry, into))

    def _json(self, method: str, path: str, **call: Any) -> Steps[Any]:
        response = yield from self._call(Call(method, path, **call))
        return response.json()

    def _all_pages(self, path: str, params: dict[str, Any]) -> Steps[list[dict[str, Any]]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            body = yield from self._json("GET", path, params={**params, "limit": 200, **_present(cursor=cursor)})
            items.extend(body["items"])
            cursor = body.get("next_cursor")
            if not cursor:
                return items

    def _submit(self, path: str, body: dict[str, Any], idempotency_key: str | None) -> Steps[dict[str, Any]]:
        # Every submission carries a key, so that this client's own retries, and a caller resubmitting
        # with the key it is given back, can never create a second request.
        key = idempotency_key or str(uuid.uuid4())
        answer = yield from self._json("POST", path, json=body, headers={"Idempotency-Key": key})
        return {**answer, "idempotency_key": key}

    def _poll(
        self,
        path: str,
        parse: Callable[[dict[str, Any]], T],
        *,
        timeout: float,
        poll: float | None,
        on_update: Callable[[T], None] | None,
        still: Callable[[T], str],
    ) -> Steps[T]:
        """GET `path` until what it parses to is `done`; TimeoutError after `timeout` seconds, saying `still(it)`.

        Waits `poll` seconds between polls (default: the answer's Retry-After, at most MAX_POLL).
        """
        deadline = time.monotonic() + timeout
        while True:
            response = yield from self._call(Call("GET", path))
            current = parse(response.json())
            if on_update is not None:
                on_update(current)
            if current.done:  # type: ignore[attr-defined]
                return current
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{still(current)} after {timeout:.0f} s")
            delay = poll if poll is not None else min(MAX_POLL, retry_after(response.headers.get("Retry-After")) or 1.0)
            yield Sleep(max(0.05, min(delay, deadline - time.monotonic())))

    def _download(self, path: str, dest: str | os.PathLike, *, params: dict[str, Any] | None = None) -> Steps[Path]:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        yield from self._call(Call("GET", path, params=params), into=dest)
        return dest

    # --- health -----------------------------------------------------------------------------------

    @operation
    def health(self) -> Steps[dict[str, Any]]:
        """GET /healthz."""
        return (yield from self._json("GET", "/healthz"))

    @operation
    def ready(self) -> Steps[dict[str, Any]]:
        """GET /readyz: ApiError 503 at once when not ready (a probe reports the present, it does not wait)."""
        return (yield from self._json("GET", "/readyz", retry=False))

    # --- datasets and models ------------------------------------------------------------------------

    @operation
    def register_dataset(self, archive: str | os.PathLike, *, name: str | None = None) -> Steps[Dataset]:
        """Upload an ltu-dataset tar archive."""
        upload = Upload("archive", Path(archive), "application/x-tar")
        return Dataset.from_json(
            (yield from self._json("POST", "/v1/datasets", upload=upload, data=_present(name=name)))
        )

    @operation
    def get_dataset(self, dataset_id: str) -> Steps[Dataset]:
        """One dataset."""
        return Dataset.from_json((yield from self._json("GET", f"/v1/datasets/{dataset_id}")))

    @operation
    def register_model(
        self, weights: str | os.PathLike, *, dataset_id: str, name: str = "model", recipe: dict[str, Any] | None = None
    ) -> Steps[Model]:
        """Upload initial safetensors weights of a model trained on a registered dataset."""
        data = {"dataset_id": dataset_id, "name": name}
        if recipe is not None:
            data["recipe"] = json.dumps(recipe)
        upload = Upload("weights", Path(weights), "application/octet-stream")
        return Model.from_json((yield from self._json("POST", "/v1/models", upload=upload, data=data)))

    @operation
    def get_model(self, model_id: str) -> Steps[Model]:
        """One model."""
        return Model.from_json((yield from self._json("GET", f"/v1/models/{model_id}")))

    @operation
    def list_models(self) -> Steps[list[Model]]:
        """All models of the tenant."""
        return [Model.from_json(m) for m in (yield from self._all_pages("/v1/models", {}))]

    @operation
    def list_versions(self, model_id: str) -> Steps[list[ModelVersion]]:
        """All versions of a model, newest first."""
        body = yield from self._json("GET", f"/v1/models/{model_id}/versions")
        return [ModelVersion.from_json(v) for v in body["items"]]

    @operation
    def get_version(self, model_id: str, number: int) -> Steps[ModelVersion]:
        """One version of a model."""
        return ModelVersion.from_json((yield from self._json("GET", f"/v1/models/{model_id}/versions/{number}")))

    @operation
    def get_audit_references(self, model_id: str) -> Steps[AuditReferences]:
        """Where the model's audit reference models stand (newest training, the set in use, the audit tier)."""
        return AuditReferences.from_json((yield from self._json("GET", f"/v1/models/{model_id}/audit-references")))

    @operation
    def train_audit_references(self, model_id: str, *, count: int | None = None) -> Steps[AuditReferences]:
        """Queue a training of the model's reference models (admin); the one queued or running is kept if any."""
        body = yield from self._json("POST", f"/v1/models/{model_id}/audit-references", json=_present(count=count))
        return AuditReferences.from_json(body)

    @operation
    def cancel_audit_references(self, model_id: str) -> Steps[AuditReferences]:
        """Cancel the model's queued or running reference training (admin)."""
        return AuditReferences.from_json(
            (yield from self._json("POST", f"/v1/models/{model_id}/audit-references/cancel"))
        )

    @operation
    def wait_audit_references(
        self,
        model_id: str,
        *,
        timeout: float = 3600.0,
        poll: float = 1.0,
        on_update: Callable[[AuditReferences], None] | None = None,
    ) -> Steps[AuditReferences]:
        """Poll until no reference training of the model is queued or running; TimeoutError after `timeout` seconds.

        The answer's `audit_tier` says whether the likelihood-ratio tier is now available.
        """
        return (
            yield from self._poll(
                f"/v1/models/{model_id}/audit-references",
                AuditReferences.from_json,
                timeout=timeout,
                poll=poll,
                on_update=on_update,
                still=lambda s: f"the reference models of model {model_id} are still {s.audit_status}",
            )
        )

    @operation
    def download_weights(self, model_id: str, number: int, dest: str | os.PathLike) -> Steps[Path]:
        """Download a version's safetensors file and check its sha256 against the version record."""
        version = ModelVersion.from_json((yield from self._json("GET", f"/v1/models/{model_id}/versions/{number}")))
        dest = yield from self._download(version.weights_url, dest)
        digest = _sha256(dest)
        if digest != version.sha256:
            dest.unlink(missing_ok=True)
            raise ApiError(
                0, "checksum mismatch", f"downloaded weights have sha256 {digest}, expected {version.sha256}"
            )
        return dest

    # --- deletion requests -----------------------------------------------------------------------

    @operation
    def submit_deletion(
        self,
        model_id: str,
        *,
        subject_ids: list[str] | None = None,
        sample_ids: list[str] | None = None,
        method: str | None = None,
        parameters: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Steps[DeletionRequest]:
        """POST /v1/deletion-requests (202) with `idempotency_key`, or a new random one; the request answered
        carries the key in `idempotency_key` (submitting again with it returns this same request)."""
        body = {"model_id": model_id, **_present(subject_ids=subject_ids, sample_ids=sample_ids, method=method)}
        if parameters:
            body["parameters"] = parameters
        return DeletionRequest.from_json((yield from self._submit("/v1/deletion-requests", body, idempotency_key)))

    @operation
    def get_request(self, request_id: str) -> Steps[DeletionRequest]:
        """One deletion request."""
        return DeletionRequest.from_json((yield from self._json("GET", f"/v1/deletion-requests/{request_id}")))

    @operation
    def list_requests(
        self,
        *,
        status: str | None = None,
        model_id: str | None = None,
        deadline: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Steps[Page[DeletionRequest]]:
        """One page of requests, newest first (deadline: overdue | due_soon)."""
        params = _present(status=status, model_id=model_id, deadline=deadline, cursor=cursor, limit=limit)
        body = yield from self._json("GET", "/v1/deletion-requests", params=params)
        return Page([DeletionRequest.from_json(r) for r in body["items"]], body.get("next_cursor"))

    @operation
    def cancel_request(self, request_id: str) -> Steps[DeletionRequest]:
        """Cancel a request (at once if not started, else at the worker's next check)."""
        return DeletionRequest.from_json((yield from self._json("POST", f"/v1/deletion-requests/{request_id}/cancel")))

    @operation
    def extend_deadline(self, request_id: str, *, months: int, reason: str) -> Steps[DeletionRequest]:
        """Extend an open request's deadline once by 1 or 2 months, with the reason."""
        body = {"months": months, "reason": reason}
        path = f"/v1/deletion-requests/{request_id}/deadline-extension"
        return DeletionRequest.from_json((yield from self._json("POST", path, json=body)))

    @operation
    def certificate(self, request_id: str) -> Steps[bytes]:
        """The signed erasure certificate of a completed request, byte for byte (verify it offline)."""
        response = yield from self._call(Call("GET", f"/v1/deletion-requests/{request_id}/certificate"))
        return response.content

    @operation
    def certificate_key(self) -> Steps[dict[str, Any]]:
        """The public key that verifies certificates (a JWK)."""
        return (yield from self._json("GET", "/.well-known/ltu-certificate-key"))

    @operation
    def request_samples(self, request_id: str) -> Steps[list[RequestSample]]:
        """The samples a request names, with their erasure state."""
        body = yield from self._json("GET", f"/v1/deletion-requests/{request_id}/samples")
        return [RequestSample.from_json(s) for s in body["items"]]

    @operation
    def wait(
        self,
        request_id: str,
        *,
        timeout: float = 3600.0,
        poll: float | None = None,
        on_update: Callable[[DeletionRequest], None] | None = None,
    ) -> Steps[DeletionRequest]:
        """Poll until the request is completed, failed or cancelled; TimeoutError after `timeout` seconds.

        Polls every `poll` seconds (default: the server's Retry-After, capped at 2 s).
        """
        return (
            yield from self._poll(
                f"/v1/deletion-requests/{request_id}",
                DeletionRequest.from_json,
                timeout=timeout,
                poll=poll,
                on_update=on_update,
                still=lambda r: f"deletion request {request_id} is still {r.status}",
            )
        )

    # --- erasures: a data subject's erasure from every model and dataset of the tenant ----------

    @operation
    def submit_erasure(
        self,
        subject_ids: list[str],
        *,
        model_ids: list[str] | None = None,
        dataset_ids: list[str] | None = None,
        method: str | None = None,
        parameters: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Steps[Erasure]:
        """POST /v1/erasures (202): erase the subjects from the given models and datasets (default: all of the
        tenant's). Idempotency as for submit_deletion: the answer carries the key in `idempotency_key`."""
        body = {
            "subject_ids": subject_ids,
            **_present(model_ids=model_ids, dataset_ids=dataset_ids, method=method, parameters=parameters),
        }
        return Erasure.from_json((yield from self._submit("/v1/erasures", body, idempotency_key)))

    @operation
    def get_erasure(self, erasure_id: str) -> Steps[Erasure]:
        """One erasure, with its deletion requests and dataset purges."""
        return Erasure.from_json((yield from self._json("GET", f"/v1/erasures/{erasure_id}")))

    @operation
    def list_erasures(
        self, *, status: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> Steps[Page[Erasure]]:
        """One page of erasures, newest first."""
        body = yield from self._json("GET", "/v1/erasures", params=_present(status=status, cursor=cursor, limit=limit))
        return Page([Erasure.from_json(e) for e in body["items"]], body.get("next_cursor"))

    @operation
    def wait_erasure(
        self,
        erasure_id: str,
        *,
        timeout: float = 3600.0,
        poll: float | None = None,
        on_update: Callable[[Erasure], None] | None = None,
    ) -> Steps[Erasure]:
        """Poll until the erasure is completed, failed or cancelled; TimeoutError after `timeout` seconds
        (polls as `wait` does)."""
        return (
            yield from self._poll(
                f"/v1/erasures/{erasure_id}",
                Erasure.from_json,
                timeout=timeout,
                poll=poll,
                on_update=on_update,
                still=lambda e: f"erasure {erasure_id} is still {e.status}",
            )
        )

    @operation
    def erasure_certificate(self, erasure_id: str) -> Steps[bytes]:
        """The signed certificate of a completed erasure, byte for byte: verify_certificate checks it offline
        (parsed, it would no longer be the bytes the signature covers)."""
        response = yield from self._call(Call("GET", f"/v1/erasures/{erasure_id}/certificate"))
        return response.content

    @operation
    def subject_locations(self, subject_id: str) -> Steps[dict[str, Any]]:
        """Where a data subject's samples are (audit): per dataset (samples, erased, purged) and per model
        (the version that erased them, the versions still holding them)."""
        return (yield from self._json("POST", "/v1/subjects/locations", json={"subject_id": subject_id}))

    # --- audit and keys --------------------------------------------------------------------------

    @operation
    def audit_events(
        self,
        *,
        request_id: str | None = None,
        model_id: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        tenant_id: str | None = None,
    ) -> Steps[list[AuditEvent]]:
        """Every matching audit event in chain order (follows the cursor through all pages).

        since/until: ISO 8601 times, [since, until); tenant_id: another tenant (the operator's admin keys only).
        """
        params = _present(
            request_id=request_id, model_id=model_id, action=action, since=since, until=until, tenant_id=tenant_id
        )
        return [AuditEvent.from_json(e) for e in (yield from self._all_pages("/v1/audit/events", params))]

    @operation
    def export_audit(
        self,
        dest: str | os.PathLike,
        *,
        format: str = "csv",
        request_id: str | None = None,
        model_id: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        tenant_id: str | None = None,
    ) -> Steps[Path]:
        """Stream every matching event to `dest` as csv or ndjson (the filters of audit_events)."""
        params = _present(
            format=format,
            request_id=request_id,
            model_id=model_id,
            action=action,
            since=since,
            until=until,
            tenant_id=tenant_id,
        )
        return (yield from self._download("/v1/audit/events", dest, params=params))

    @operation
    def verify_audit(
        self,
        *,
        chain: str | None = None,
        from_seq: int | None = None,
        to_seq: int | None = None,
        page_size: int | None = None,
    ) -> Steps[dict[str, Any]]:
        """Walk an audit hash chain (or a range of it) to its end, page after page; `valid`, `checked`,
        and `broken` (position, reason) if not.

        chain: "deployment" (every event, by seq: the operator tenant's audit or admin keys only) or
        "tenant" (the caller's own events, by tenant_seq); by default the operator walks the deployment's.
        page_size: events per call (the server's maximum by default).
        """
        params = _present(chain=chain, to_seq=to_seq, limit=page_size)
        report = yield from self._json("GET", "/v1/audit/verify", params={**params, **_present(from_seq=from_seq)})
        while report["next_from_seq"] is not None:
            page = yield from self._json(
                "GET", "/v1/audit/verify", params={**params, "from_seq": report["next_from_seq"]}
            )
            report = {
                **page,
                "checked": report["checked"] + page["checked"],
                "first_seq": report["first_seq"],
                "last_seq": page["last_seq"] or report["last_seq"],
                "last_hash": page["last_hash"] or report["last_hash"],
            }
        return report

    @operation
    def audit_summary(self, *, model_id: str | None = None, tenant_id: str | None = None) -> Steps[dict[str, Any]]:
        """Compliance figures: requests by status, overdue, due soon, completion p50/p95, pass rate; per model."""
        return (
            yield from self._json("GET", "/v1/audit/summary", params=_present(model_id=model_id, tenant_id=tenant_id))
        )

    @operation
    def create_api_key(self, name: str, scopes: list[str]) -> Steps[dict[str, Any]]:
        """Create a key for the caller's tenant (admin); the answer holds the secret once."""
        return (yield from self._json("POST", "/v1/api-keys", json={"name": name, "scopes": scopes}))


def _present(**params: Any) -> dict[str, Any]:
    """The parameters that were given (None means: not given)."""
    return {k: v for k, v in params.items() if v is not None}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
