"""Service commands (serve, worker, demo, request): registered by the service package."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the service's subcommands."""
