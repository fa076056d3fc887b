"""Logging shared by every service process (API, Celery worker, embedded runner).

`configure_logging(level, json=True)` installs one stderr handler on the root logger that
writes each record as one JSON object per line. Fields bound with `bind(request_id=...,
deletion_request_id=...)` live in a contextvar, so every line logged inside that block carries them,
also from the thread pool Starlette runs sync routes in (it copies the context along). Bearer tokens
and API-key-shaped strings are masked in every line as a last line of defence; the code never logs a
secret on purpose.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from ledger.errors import ConfigError

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
