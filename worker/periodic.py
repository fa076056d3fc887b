"""A daemon thread that repeats one maintenance pass (purge, reconciliation) until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("ltu.worker")


class PeriodicLoop:
    """Runs `action()` at once and then every `interval` seconds (start/stop object).

    A failing pass (e.g. the database is briefly down) is logged and tried again next time.
    """

    def __init__(self, name: str, interval: float, action: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.action = action
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.action()
            except Exception:
                log.exception("%s pass failed; retrying in %.0f s", self.name, self.interval)
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Start the thread (the first pass runs at once)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current pass."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
