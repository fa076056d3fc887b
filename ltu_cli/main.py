"""Entry point of the `ltu` console script: builds the parser from the command modules and dispatches.

Each command group lives in its own module with a `register(subparsers)` function; handlers
import heavy packages (torch, uvicorn, the service) only when they run, so `ltu --help` and the
HTTP client commands start fast.
"""

from __future__ import annotations

import argparse
import sys

from ltu_cli import certificates, core, dataset, demo, erasure, request, serve
from ltu_cli.common import CLIError
from ltu_core.errors import LTUError

COMMAND_MODULES = (core, dataset, serve, certificates, demo, request, erasure)  # the order of `ltu --help`


def build_parser() -> argparse.ArgumentParser:
    """The full `ltu` argument parser."""
    parser = argparse.ArgumentParser(prog="ltu", description="Erasure service for trained image classifiers (LTU).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
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
