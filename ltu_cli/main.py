"""Entry point of the `ltu` console script.

Each command group lives in its own module with a `register(subparsers)` function; handlers
import heavy packages (torch, the service) only when they run, so `ltu --help` and the HTTP
client commands start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ltu_core.errors import LTUError


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


def build_parser() -> argparse.ArgumentParser:
    """The full `ltu` argument parser."""
    from ltu_cli import core, service

    parser = argparse.ArgumentParser(prog="ltu", description="Erasure service for trained image classifiers (LTU).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core.register(sub)
    service.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line and exit non-zero, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (LTUError, CLIError) as exc:
        print(f"ltu {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ltu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
