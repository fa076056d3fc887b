"""The HTTP client: one method per operation, problem+json errors raised as ApiError."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from ltu_client.models import (
    AuditEvent,
    AuditReferences,
    Dataset,
    DeletionRequest,
    Model,
    ModelVersion,
    Page,
    RequestSample,
)


class ApiError(Exception):
    """An error answer of the service (its problem document), or no answer at all (status 0)."""

    def __init__(
        self, status: int, title: str, detail: str | None = None, problem: dict[str, Any] | None = None
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.problem = problem or {}
        self.code = self.problem.get("code")
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")


class Client:
    """A client for one service URL and API key. Pass `http` to reuse an httpx.Client (tests pass
    Starlette's TestClient)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_http = http is None
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.headers = headers

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (if this client opened it)."""
        if self._owns_http:
            self.http.close()

    # --- plumbing ---------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send one request; ApiError for any answer outside 2xx."""
        try:
            response = self.http.request(method, path, headers={**self.headers, **(headers or {})}, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, "service unreachable", f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {}
            if not isinstance(problem, dict):
                problem = {}
            raise ApiError(
                response.status_code, problem.get("title") or response.reason_phrase, problem.get("detail"), problem
            )
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # --- health -----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """GET /healthz."""
        return self._json("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """GET /readyz (ApiError 503 when not ready)."""
        return self._json("GET", "/readyz")

    # --- datasets and models ------------------------------------------------------------------------

    def register_dataset(self, archive: str | os.PathLike, *, name: str | None = None) -> Dataset:
        """Upload an ltu-dataset tar archive."""
        with open(archive, "rb") as f:
            data = {"name": name} if name else {}
            return Dataset.from_json(
                self._json(
                    "POST", "/v1/datasets", files={"archive": (Path(archive).name, f, "application/x-tar")}, data=data
                )
            )

    def get_dataset(self, dataset_id: str) -> Dataset:
        """One dataset."""
        return Dataset.from_json(self._json("GET", f"/v1/datasets/{dataset_id}"))

    def register_model(
        self, weights: str | os.PathLike, *, dataset_id: str, name: str = "model", recipe: dict[str, Any] | None = None
    ) -> Model:
        """Upload initial safetensors weights of a model trained on a registered dataset."""
        data = {"dataset_id": dataset_id, "name": name}
        if recipe is not None:
            data["recipe"] = json.dumps(recipe)
        with open(weights, "rb") as f:
            body = self._json(
                "POST", "/v1/models", files={"weights": (Path(weights).name, f, "application/octet-stream")}, data=data
            )
        return Model.from_json(body)

    def get_model(self, model_id: str) -> Model:
        """One model."""
        return Model.from_json(self._json("GET", f"/v1/models/{model_id}"))

    def list_models(self) -> list[Model]:
        """All models of the tenant."""
        return [Model.from_json(m) for m in self._paged("/v1/models", {})]

    def list_versions(self, model_id: str) -> list[ModelVersion]:
        """All versions of a model, newest first."""
        return [ModelVersion.from_json(v) for v in self._json("GET", f"/v1/models/{model_id}/versions")["items"]]

    def get_version(self, model_id: str, number: int) -> ModelVersion:
        """One version of a model."""
        return ModelVersion.from_json(self._json("GET", f"/v1/models/{model_id}/versions/{number}"))

    def get_audit_references(self, model_id: str) -> AuditReferences:
        """Where the model's audit reference models stand (newest training, the set in use, the audit tier)."""
        return AuditReferences.from_json(self._json("GET", f"/v1/models/{model_id}/audit-references"))

    def train_audit_references(self, model_id: str, *, count: int | None = None) -> AuditReferences:
        """Queue a training of the model's reference models (admin); the one queued or running is kept if any."""
        body = {"count": count} if count is not None else {}
        return AuditReferences.from_json(self._json("POST", f"/v1/models/{model_id}/audit-references", json=body))

    def cancel_audit_references(self, model_id: str) -> AuditReferences:
        """Cancel the model's queued or running reference training (admin)."""
        return AuditReferences.from_json(self._json("POST", f"/v1/models/{model_id}/audit-references/cancel"))

    def wait_audit_references(
        self,
        model_id: str,
        *,
        timeout: float = 3600.0,
        poll: float = 1.0,
        on_update: Callable[[AuditReferences], None] | None = None,
    ) -> AuditReferences:
        """Poll until no reference training of the model is queued or running; TimeoutError after `timeout` seconds.

        The answer's `audit_tier` says whether the likelihood-ratio tier is now available.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.get_audit_references(model_id)
            if on_update is not None:
                on_update(status)
            if status.done:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the reference models of model {model_id} are still {status.audit_status} after {timeout:.0f} s"
                )
            time.sleep(max(0.05, min(poll, deadline - time.monotonic())))

    def download_weights(self, model_id: str, number: int, dest: str | os.PathLike) -> Path:
        """Download a version's safetensors file and check its sha256 against the version record."""
        version = self.get_version(model_id, number)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with self.http.stream("GET", version.weights_url, headers=self.headers) as response:
            if response.status_code >= 400:
                response.read()
                self.request("GET", version.weights_url)  # raises the ApiError with the problem document
            with open(dest, "wb") as f:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    f.write(chunk)
        if digest.hexdigest() != version.sha256:
            dest.unlink(missing_ok=True)
            raise ApiError(
                0,
                "checksum mismatch",
                f"downloaded weights have sha256 {digest.hexdigest()}, expected {version.sha256}",
            )
        return dest

    # --- deletion requests -----------------------------------------------------------------------

    def submit_deletion(
        self,
        model_id: str,
        *,
        subject_ids: list[str] | None = None,
        sample_ids: list[str] | None = None,
        method: str | None = None,
        parameters: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> DeletionRequest:
        """POST /v1/deletion-requests (202)."""
        body: dict[str, Any] = {"model_id": model_id}
        if subject_ids is not None:
            body["subject_ids"] = subject_ids
        if sample_ids is not None:
            body["sample_ids"] = sample_ids
        if method is not None:
            body["method"] = method
        if parameters:
            body["parameters"] = parameters
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return DeletionRequest.from_json(self._json("POST", "/v1/deletion-requests", json=body, headers=headers))

    def get_request(self, request_id: str) -> DeletionRequest:
        """One deletion request."""
        return DeletionRequest.from_json(self._json("GET", f"/v1/deletion-requests/{request_id}"))

    def list_requests(
        self,
        *,
        status: str | None = None,
        model_id: str | None = None,
        deadline: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[DeletionRequest]:
        """One page of requests, newest first (deadline: overdue | due_soon)."""
        params = _present(status=status, model_id=model_id, deadline=deadline, cursor=cursor, limit=limit)
        body = self._json("GET", "/v1/deletion-requests", params=params)
        return Page([DeletionRequest.from_json(r) for r in body["items"]], body.get("next_cursor"))

    def cancel_request(self, request_id: str) -> DeletionRequest:
        """Cancel a request (at once if not started, else at the worker's next check)."""
        return DeletionRequest.from_json(self._json("POST", f"/v1/deletion-requests/{request_id}/cancel"))

    def extend_deadline(self, request_id: str, *, months: int, reason: str) -> DeletionRequest:
        """Extend an open request's deadline once by 1 or 2 months, with the reason."""
        body = {"months": months, "reason": reason}
        return DeletionRequest.from_json(
            self._json("POST", f"/v1/deletion-requests/{request_id}/deadline-extension", json=body)
        )

    def certificate(self, request_id: str) -> bytes:
        """The signed erasure certificate of a completed request, byte for byte (verify it offline)."""
        return self.request("GET", f"/v1/deletion-requests/{request_id}/certificate").content

    def certificate_key(self) -> dict[str, Any]:
        """The public key that verifies certificates (a JWK)."""
        return self._json("GET", "/.well-known/ltu-certificate-key")

    def request_samples(self, request_id: str) -> list[RequestSample]:
        """The samples a request names, with their erasure state."""
        return [
            RequestSample.from_json(s)
            for s in self._json("GET", f"/v1/deletion-requests/{request_id}/samples")["items"]
        ]

    def wait(
        self,
        request_id: str,
        *,
        timeout: float = 3600.0,
        poll: float | None = None,
        on_update: Callable[[DeletionRequest], None] | None = None,
    ) -> DeletionRequest:
        """Poll until the request is completed, failed or cancelled; TimeoutError after `timeout` seconds.

        Polls every `poll` seconds (default: the server's Retry-After, capped at 2 s).
        """
        deadline = time.monotonic() + timeout
        while True:
            response = self.request("GET", f"/v1/deletion-requests/{request_id}")
            request = DeletionRequest.from_json(response.json())
            if on_update is not None:
                on_update(request)
            if request.done:
                return request
            if time.monotonic() >= deadline:
                raise TimeoutError(f"deletion request {request_id} is still {request.status} after {timeout:.0f} s")
            delay = poll if poll is not None else min(2.0, float(response.headers.get("Retry-After", "1")))
            time.sleep(max(0.05, min(delay, deadline - time.monotonic())))

    # --- audit and keys --------------------------------------------------------------------------

    def audit_events(
        self,
        *,
        request_id: str | None = None,
        model_id: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        tenant_id: str | None = None,
    ) -> list[AuditEvent]:
        """Every matching audit event in chain order (follows the cursor through all pages).

        since/until: ISO 8601 times, [since, until); tenant_id: another tenant (the operator's admin keys only).
        """
        params = _present(
            request_id=request_id, model_id=model_id, action=action, since=since, until=until, tenant_id=tenant_id
        )
        return [AuditEvent.from_json(e) for e in self._paged("/v1/audit/events", params)]

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
    ) -> Path:
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
        dest = Path(dest)
        with self.http.stream("GET", "/v1/audit/events", params=params, headers=self.headers) as response:
            if response.status_code >= 400:
                response.read()
                self.request("GET", "/v1/audit/events", params=params)  # raises the ApiError with the problem document
            with open(dest, "wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return dest

    def verify_audit(
        self,
        *,
        chain: str | None = None,
        from_seq: int | None = None,
        to_seq: int | None = None,
        page_size: int | None = None,
    ) -> dict[str, Any]:
        """Walk an audit hash chain (or a range of it) to its end, page after page; `valid`, `checked`,
        and `broken` (position, reason) if not.

        chain: "deployment" (every event, by seq: the operator tenant's audit or admin keys only) or
        "tenant" (the caller's own events, by tenant_seq); by default the operator walks the deployment's.
        page_size: events per call (the server's maximum by default).
        """
        params = _present(chain=chain, to_seq=to_seq, limit=page_size)
        report = self._json("GET", "/v1/audit/verify", params={**params, **_present(from_seq=from_seq)})
        while report["next_from_seq"] is not None:
            page = self._json("GET", "/v1/audit/verify", params={**params, "from_seq": report["next_from_seq"]})
            report = {
                **page,
                "checked": report["checked"] + page["checked"],
                "first_seq": report["first_seq"],
                "last_seq": page["last_seq"] or report["last_seq"],
                "last_hash": page["last_hash"] or report["last_hash"],
            }
        return report

    def audit_summary(self, *, model_id: str | None = None, tenant_id: str | None = None) -> dict[str, Any]:
        """Compliance figures: requests by status, overdue, due soon, completion p50/p95, pass rate; per model."""
        return self._json("GET", "/v1/audit/summary", params=_present(model_id=model_id, tenant_id=tenant_id))

    def create_api_key(self, name: str, scopes: list[str]) -> dict[str, Any]:
        """Create a key for the caller's tenant (admin); the answer holds the secret once."""
        return self._json("POST", "/v1/api-keys", json={"name": name, "scopes": scopes})

    def _paged(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            body = self._json("GET", path, params={**params, "limit": 200, **({"cursor": cursor} if cursor else {})})
            yield from body["items"]
            cursor = body.get("next_cursor")
            if not cursor:
                return


def _present(**params: Any) -> dict[str, Any]:
    """The query parameters that were given (None means: not given)."""
    return {k: v for k, v in params.items() if v is not None}
