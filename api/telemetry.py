"""Per-request telemetry: a request id, one access log line, and the HTTP metrics.

Each request gets an id (a sane incoming X-Request-ID, else a new one), echoed in the response's
X-Request-ID header and bound to the log context (ledger.observability.bind) for everything logged
while it is served. The access line and the metrics name the route template, never the concrete
path or its query string, so neither ids nor secrets reach them and label cardinality stays bounded.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram

from ledger.observability import bind

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_SCOPE = "ltu.request_id"  # where the id lives in the ASGI scope (the 500 handler reads it there)
_SANE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")  # anything else could forge log fields or lines
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# No route matched, or the answer came before routing (a 413 on Content-Length): one label value,
# whatever paths scanners try.
UNROUTED = "unrouted"
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # probed every few seconds: access lines at DEBUG

access_log = logging.getLogger("ltu.access")
log = logging.getLogger("ltu.api")


class HttpMetrics:
    """The HTTP families of one app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("ltu_http_requests", "HTTP requests answered, by method, route template and status.",
                                ["method", "route", "status"], registry=registry)
        self.duration = Histogram("ltu_http_request_duration_seconds",
                                  "Seconds from receiving a request to the end of its response, by route template.",
                                  ["method", "route"], registry=registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


def request_id_of(scope: dict) -> str | None:
    """The id the telemetry middleware gave this request."""
    return scope.get(REQUEST_ID_SCOPE)


def request_telemetry(metrics: HttpMetrics):
    """ASGI middleware factory: request id, access log line and metrics for every HTTP request."""

    class RequestTelemetry:
        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
            request_id = incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex
            scope[REQUEST_ID_SCOPE] = request_id
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            status, started = 500, time.perf_counter()

            async def send_with_id(message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = list(message.get("headers") or [])
                    if not any(name.lower() == b"x-request-id" for name, _ in headers):
                        headers.append((b"x-request-id", request_id.encode()))
                    message = {**message, "headers": headers}
                await send(message)

            with bind(request_id=request_id):
                try:
                    await self.app(scope, receive, send_with_id)
                except Exception:
                    # Logged here, inside the request's context; the problem handler outside only answers.
                    log.exception("unhandled error on %s %s", method, _route(scope))
                    raise
                finally:
                    seconds = time.perf_counter() - started
                    route = _route(scope)
                    metrics.observe(method, route, status, seconds)
                    access_log.log(
                        logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
                        "%s %s %d %.1f ms", method, route, status, seconds * 1000,
                        extra={"http_method": method, "route": route, "status": status,
                               "duration_ms": round(seconds * 1000, 1)},
                    )

    return RequestTelemetry


def _route(scope: dict) -> str:
    # The router writes the matched route (or the path-only match of a 405) into the shared scope.
    return getattr(scope.get("route"), "path", None) or UNROUTED
