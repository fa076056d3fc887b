"""Telemetry: per request a request id, one access log line and the HTTP metrics; the ledger's figures.

Each request gets an id (a sane incoming X-Request-ID, else a new one), echoed in the response's
X-Request-ID header and bound to the log context (ledger.observability.bind) for everything logged
while it is served. The access line and the metrics name the route template, never the concrete
path or its query string, so neither ids nor secrets reach them and label cardinality stays bounded.

`LedgerCollector` reads the ledger at scrape time (ledger.reports.deployment: aggregate queries
only), so every API process reports the same figures whichever of them Prometheus asks.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from sqlalchemy.exc import SQLAlchemyError

from ledger import reports
from ledger.db import Database
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
        self.requests = Counter(
            "ltu_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "ltu_http_request_duration_seconds",
            "Seconds from receiving a request to the end of its response, by route template.",
            ["method", "route"],
            registry=registry,
        )

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
                        "%s %s %d %.1f ms",
                        method,
                        route,
                        status,
                        seconds * 1000,
                        extra={
                            "http_method": method,
                            "route": route,
                            "status": status,
                            "duration_ms": round(seconds * 1000, 1),
                        },
                    )

    return RequestTelemetry


def _route(scope: dict) -> str:
    # The router writes the matched route (or the path-only match of a 405) into the shared scope.
    return getattr(scope.get("route"), "path", None) or UNROUTED


# --- the ledger's figures ------------------------------------------------------------------------

QUANTILES = (0.5, 0.9, 0.99)
_PHASE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # bounds the label's cardinality whatever a row holds
metrics_log = logging.getLogger("ltu.observability")


class LedgerCollector(Collector):
    """Prometheus figures read from the ledger at scrape time, across all tenants.

    ltu_deletion_requests{status}, ltu_queue_depth{queue}, ltu_job_phase_seconds{phase} (a summary
    over the reports.PHASE_WINDOW most recent completed requests), ltu_verifications{passed,fallback},
    ltu_failed_requests{error_code} and ltu_ledger_up (0 when the ledger did not answer).
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        try:
            with self.database.session() as session:
                families = _families(reports.deployment(session))
        except SQLAlchemyError as exc:
            metrics_log.warning("metrics: the ledger did not answer (%s)", exc.__class__.__name__)
            families = []
        up = GaugeMetricFamily("ltu_ledger_up", "1 when the ledger answered this scrape's queries, else 0.")
        up.add_metric([], 1.0 if families else 0.0)
        yield up
        yield from families


def _families(figures: reports.Deployment) -> list[Metric]:
    by_status = GaugeMetricFamily(
        "ltu_deletion_requests", "Deletion requests in the ledger by status.", labels=["status"]
    )
    for status, count in sorted(figures.by_status.items()):
        by_status.add_metric([status], count)
    depth = GaugeMetricFamily(
        "ltu_queue_depth",
        "Work waiting: requests received or queued but not started "
        "(queue=requests), dispatch rows not yet handed on (queue=outbox).",
        labels=["queue"],
    )
    depth.add_metric(["requests"], figures.waiting_requests)
    depth.add_metric(["outbox"], figures.pending_dispatches)
    return [
        by_status,
        depth,
        _phases(figures.phase_seconds),
        _verifications(figures.verifications),
        _failures(figures.failures),
    ]


def _phases(phase_seconds: dict[str, list[float]]) -> Metric:
    family = SummaryMetricFamily(
        "ltu_job_phase_seconds",
        f"Seconds erasure jobs spent in each phase, over the {reports.PHASE_WINDOW} most recent completed requests "
        "(a window: _count and _sum may decrease).",
        labels=["phase"],
    )
    for phase, values in sorted(phase_seconds.items()):
        if not (isinstance(phase, str) and _PHASE_NAME.match(phase)):
            continue
        family.add_metric([phase], count_value=len(values), sum_value=sum(values))
        ordered = sorted(values)
        for q in QUANTILES:
            family.samples.append(
                Sample("ltu_job_phase_seconds", {"phase": phase, "quantile": str(q)}, _percentile(ordered, q))
            )
    return family


def _verifications(counts: dict[tuple[bool, bool], int]) -> Metric:
    family = GaugeMetricFamily(
        "ltu_verifications",
        "Completed requests by membership-inference verdict and by "
        "whether the Retrain fallback produced the published version.",
        labels=["passed", "fallback"],
    )
    for passed in (True, False):
        for fallback in (False, True):
            family.add_metric([str(passed).lower(), str(fallback).lower()], counts.get((passed, fallback), 0))
    return family


def _failures(counts: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(
        "ltu_failed_requests",
        "Failed requests by error code (verification_failed: no version passed verification and none was published).",
        labels=["error_code"],
    )
    for code, count in sorted(counts.items()):
        family.add_metric([code], count)
    return family


def _percentile(ordered: list[float], q: float) -> float:
    """The q-quantile (0–1) of sorted values, by linear interpolation."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
