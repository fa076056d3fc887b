"""What the command modules share: the user-facing error, `--param` parsing, the one place the CLI
reads the service's settings, and the HTTP client of the client commands.

Light on purpose (standard library only at import time): `ltu --help` imports every command module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
ADMIN_KEY_FILE = "admin.key"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`--param KEY=VALUE` pairs; VALUE is read as JSON when it parses, else kept as a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def load_settings():
    """The service's settings from the environment; a configuration error is a CLIError."""
    from ltu_settings import ConfigError, Settings

    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def configure_logging() -> None:
    """JSON lines on stderr (LTU_LOG_FORMAT=text for a terminal) at LTU_LOG_LEVEL (default INFO)."""
    from ledger.errors import ConfigError
    from ledger.observability import configure_logging_from_env

    try:
        configure_logging_from_env()
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def service_url(url: str | None) -> str:
    """`--url`, else LTU_URL, else the default local service."""
    return url or os.environ.get("LTU_URL") or DEFAULT_URL


def client_options() -> argparse.ArgumentParser:
    """The options every client command takes (a parent parser): --url, --api-key, --json."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--url", default=None, help=f"service URL (default LTU_URL or {DEFAULT_URL})")
    options.add_argument("--api-key", default=None, help="API key (default LTU_API_KEY, else LTU_HOME/admin.key)")
    options.add_argument("--json", action="store_true", help="print the full JSON answer")
    return options


def build_client(args: argparse.Namespace):
    """An ltu_client.Client from `--url` and `--api-key` (else LTU_API_KEY, else LTU_HOME/admin.key)."""
    from ltu_client import Client

    key = args.api_key or os.environ.get("LTU_API_KEY")
    if not key:
        home = Path(os.environ.get("LTU_HOME") or ".ltu")
        if (home / ADMIN_KEY_FILE).is_file():
            key = (home / ADMIN_KEY_FILE).read_text().strip()
    return Client(service_url(args.url), key)


def print_idempotency_key(submitted) -> None:
    """The key a submission went with, on stderr (stdout stays the answer) and at once, so that whoever
    lost the answer, or interrupts a --wait, can resubmit without creating a second one."""
    key = submitted.idempotency_key
    print(
        f"submitted {submitted.id} with Idempotency-Key {key} (--idempotency-key {key} resubmits it)", file=sys.stderr
    )


def call(fn, *args: Any, **kwargs: Any):
    """Run a client call; service errors become one-line CLI errors."""
    from ltu_client import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        raise CLIError(str(exc)) from None


def redact(url: str) -> str:
    """A database or broker URL without its credentials, for printing."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
