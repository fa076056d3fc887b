"""Logs and metrics shared by every service process (API, Celery worker, embedded runner).

Logging: `configure_logging(level, json=True)` installs one stderr handler on the root logger that
writes each record as one JSON object per line. Fields bound with `bind(request_id=...,
deletion_request_id=...)` live in a contextvar, so every line logged inside that block carries them,
also from the thread pool Starlette runs sync routes in (it copies the context along). Bearer tokens
and API-key-shaped strings are masked in every line as a last line of defence; the code never logs a
secret on purpose.

Metrics: `LedgerCollector` reads the ledger at scrape time (aggregate queries only), so every API
process reports the same figures whichever of them Prometheus asks.
"""

from __future__ import annotations

import json as jsonlib
import logging
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError

from ledger.db import Database
from ledger.settings import ConfigError
from ledger.tables import (
    COMPLETED,
    FAILED,
    QUEUED,
    RECEIVED,
    REQUEST_STATUSES,
    DeletionRequest,
    OutboxMessage,
)

log = logging.getLogger("ltu.observability")

# --- context fields ------------------------------------------------------------------------------

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_FIELDS: ContextVar[Mapping[str, Any]] = ContextVar("ltu_log_fields", default=_EMPTY)


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add `fields` (None values are skipped) to every log line written inside the block."""
    added = {k: v for k, v in fields.items() if v is not None}
    token = _FIELDS.set(MappingProxyType({**_FIELDS.get(), **added}))
    try:
        yield
    finally:
        _FIELDS.reset(token)


def bound_fields() -> dict[str, Any]:
    """The fields bound in the current context."""
    return dict(_FIELDS.get())


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (a field set explicitly with `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _FIELDS.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# --- formatting ----------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra=` or a bound field.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}
_SECRETS = (
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+"), r"\1[redacted]"),
    (re.compile(r"\bltu_[A-Za-z0-9_\-]{16,}"), "ltu_[redacted]"),  # tenants.generate_key's shape
)


def redact(text: str) -> str:
    """`text` with bearer credentials and API-key-shaped tokens masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The non-standard attributes of a record: its `extra=` fields and the bound context."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the bound/extra fields, exc (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record_fields(record).items():
            payload.setdefault(key, value if isinstance(value, int | float | bool | None) else redact(str(value)))
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return jsonlib.dumps(payload, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal: the message, then the bound/extra fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
        return redact(f"{line}  [{fields}]" if fields else line)


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _ServiceHandler(logging.StreamHandler):
    """The handler configure_logging installs (a distinct class, so a second call replaces it)."""


def configure_logging(level: str | int = "INFO", *, json: bool = True, stream: TextIO | None = None) -> None:
    """Send every logger's records to `stream` (stderr), JSON lines or text, at `level` and above.

    Idempotent: a second call replaces the handler of the first. Libraries that attach handlers of
    their own (uvicorn's default config, Celery's hijacking) should be told not to, so that their
    records propagate here.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(handler)
        handler.close()
    handler = _ServiceHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def configure_logging_from_env(environ: Mapping[str, str] | None = None, *, default_level: str | int = "INFO") -> None:
    """configure_logging from LTU_LOG_LEVEL (else `default_level`, a name or a number such as Celery's
    --loglevel) and LTU_LOG_FORMAT (json, the default, or text). ConfigError names the variable when a
    value is unusable.
    """
    env = os.environ if environ is None else environ
    fallback = logging.getLevelName(default_level) if isinstance(default_level, int) else default_level
    level = (env.get("LTU_LOG_LEVEL") or fallback).upper()
    style = (env.get("LTU_LOG_FORMAT") or "json").lower()
    if level not in LEVELS:
        raise ConfigError(f"LTU_LOG_LEVEL must be one of {', '.join(LEVELS)}, got {level!r}")
    if style not in ("json", "text"):
        raise ConfigError(f"LTU_LOG_FORMAT must be json or text, got {style!r}")
    configure_logging(level, json=style == "json")


# --- metrics -------------------------------------------------------------------------------------

PHASE_WINDOW = 1000  # phase durations are summarised over this many most recent completed requests
QUANTILES = (0.5, 0.9, 0.99)
_PHASE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # bounds the label's cardinality whatever a row holds


class LedgerCollector(Collector):
    """Prometheus figures read from the ledger at scrape time, across all tenants.

    ltu_deletion_requests{status}, ltu_queue_depth{queue}, ltu_job_phase_seconds{phase} (a summary
    over the PHASE_WINDOW most recent completed requests), ltu_verifications{passed,fallback},
    ltu_failed_requests{error_code} and ltu_ledger_up (0 when the ledger did not answer).
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        try:
            with self.database.session() as session:
                families = self._families(session)
        except SQLAlchemyError as exc:
            log.warning("metrics: the ledger did not answer (%s)", exc.__class__.__name__)
            families = []
        up = GaugeMetricFamily("ltu_ledger_up", "1 when the ledger answered this scrape's queries, else 0.")
        up.add_metric([], 1.0 if families else 0.0)
        yield up
        yield from families

    def _families(self, session) -> list[Metric]:
        by_status = dict.fromkeys(REQUEST_STATUSES, 0)
        by_status.update(session.execute(select(DeletionRequest.status, func.count()).group_by(DeletionRequest.status)).all())
        requests = GaugeMetricFamily("ltu_deletion_requests", "Deletion requests in the ledger by status.", labels=["status"])
        for status, count in sorted(by_status.items()):
            requests.add_metric([status], count)

        outbox = session.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.dispatched_at.is_(None)))
        depth = GaugeMetricFamily("ltu_queue_depth", "Work waiting: requests received or queued but not started "
                                  "(queue=requests), dispatch rows not yet handed on (queue=outbox).", labels=["queue"])
        depth.add_metric(["requests"], by_status.get(RECEIVED, 0) + by_status.get(QUEUED, 0))
        depth.add_metric(["outbox"], outbox or 0)
        return [requests, depth, self._phases(session), self._verifications(session), self._failures(session)]

    def _phases(self, session) -> Metric:
        # Only the phase_seconds member is read (details also holds score lists, far larger).
        rows = session.scalars(
            select(DeletionRequest.details["phase_seconds"])
            .where(DeletionRequest.status == COMPLETED, DeletionRequest.finished_at.is_not(None))
            .order_by(DeletionRequest.finished_at.desc())
            .limit(PHASE_WINDOW)
        )
        durations: dict[str, list[float]] = {}
        for phases in rows:
            if not isinstance(phases, dict):  # older rows, or a worker that did not record them
                continue
            for phase, seconds in phases.items():
                if (isinstance(phase, str) and _PHASE_NAME.match(phase) and isinstance(seconds, int | float)
                        and not isinstance(seconds, bool) and math.isfinite(seconds) and seconds >= 0):
                    durations.setdefault(phase, []).append(float(seconds))
        family = SummaryMetricFamily(
            "ltu_job_phase_seconds",
            f"Seconds erasure jobs spent in each phase, over the {PHASE_WINDOW} most recent completed requests "
            "(a window: _count and _sum may decrease).",
            labels=["phase"],
        )
        for phase, values in sorted(durations.items()):
            family.add_metric([phase], count_value=len(values), sum_value=sum(values))
            ordered = sorted(values)
            for q in QUANTILES:
                family.samples.append(Sample("ltu_job_phase_seconds", {"phase": phase, "quantile": str(q)},
                                             _percentile(ordered, q)))
        return family

    def _verifications(self, session) -> Metric:
        # JSON null and a missing member both read as SQL NULL through ->> / JSON_EXTRACT.
        verdicts = (
            select(
                DeletionRequest.verification["passed"].as_boolean().label("passed"),
                case((DeletionRequest.verification["fallback"].as_string().is_not(None), True), else_=False).label("fallback"),
            )
            .where(DeletionRequest.status == COMPLETED)
            .subquery()
        )
        family = GaugeMetricFamily("ltu_verifications", "Completed requests by membership-inference verdict and by "
                                   "whether the Retrain fallback produced the published version.",
                                   labels=["passed", "fallback"])
        counts = {(bool(p), bool(f)): n for p, f, n in session.execute(
            select(verdicts.c.passed, verdicts.c.fallback, func.count()).group_by(verdicts.c.passed, verdicts.c.fallback))
            if p is not None}  # a verification record without a verdict (JSON null) is no outcome
        for passed in (True, False):
            for fallback in (False, True):
                family.add_metric([str(passed).lower(), str(fallback).lower()], counts.get((passed, fallback), 0))
        return family

    def _failures(self, session) -> Metric:
        family = GaugeMetricFamily("ltu_failed_requests", "Failed requests by error code (verification_failed: no "
                                   "version passed verification and none was published).", labels=["error_code"])
        failed = session.execute(
            select(func.coalesce(DeletionRequest.error_code, "unknown"), func.count())
            .where(DeletionRequest.status == FAILED)
            .group_by(DeletionRequest.error_code)
        ).all()
        counts = {"verification_failed": 0, **{str(code): n for code, n in failed}}
        for code, count in sorted(counts.items()):
            family.add_metric([code], count)
        return family


def _percentile(ordered: list[float], q: float) -> float:
    """The q-quantile (0–1) of sorted values, by linear interpolation."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
