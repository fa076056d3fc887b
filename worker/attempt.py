"""One execution attempt's hold on its requests: every ledger write of a run goes through here.

An `Attempt` holds the lease `token` of one or more claimed (coalesced) requests. Its writes are
short transactions, so no database session is held while a model trains. Each write is also the
requests' heartbeat, and raises `LeaseLost` once a request is no longer held by this attempt (the
reconciler gave it to another execution): the caller stops at once and writes nothing more.

Light on purpose (no torch): the orchestrator in worker/job.py imports it in the API process.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from typing import Any

from ledger import requests
from ledger.errors import LeaseLost
from ledger.tables import CANCELLED
from worker.context import JobContext

log = logging.getLogger("ltu.worker")

PROGRESS_INTERVAL = 0.5  # seconds between progress writes within one phase
CANCEL_CHECK_INTERVAL = 1.0  # seconds between cancellation reads


class JobOutcome(StrEnum):
    """What one call of the job did with its request."""

    COMPLETED = "completed"  # this call finished it (and published a version)
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # it was already finished or cancelled
    HELD = "held"  # another live execution holds it (e.g. a coalesced run took it along)
    BUSY = "busy"  # startable, but it kept changing under the claim: try again shortly
    LEASE_LOST = "lease_lost"  # taken over by another execution meanwhile


class JobFailed(Exception):
    """The request cannot be executed; `code` and the message land in its record."""

    def __init__(self, code: str, message: str, *, values: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.values = values or {}  # columns to write with the failure (e.g. the failing verification)


class Cancelled(Exception):
    """Every request of the run asked to be cancelled."""


class Attempt:
    """The lease on `request_ids` (the first led the claim), with progress, cancellation and endings.

    Requests cancelled while running, or found to have nothing left to forget, leave the list
    (`drop`); the run goes on for the others.
    """

    def __init__(self, ctx: JobContext, request_ids: list[str], token: str) -> None:
        self.ctx = ctx
        self.request_ids = list(request_ids)
        self.leader = request_ids[0]
        self.token = token
        self.phase_seconds: dict[str, float] = {}
        self._phase: str | None = None
        self._phase_started = time.monotonic()
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancelled: set[str] = set()

    def restart(self) -> None:
        """A new try on the same lease (after a rebase): timings start again."""
        self.phase_seconds.clear()
        self._phase = None

    def report(self, **values: Any) -> None:
        """Write columns to every request of the run (LeaseLost if one of them is not ours any more)."""
        with self.ctx.database.transaction() as session:
            requests.report(session, request_ids=self.request_ids, token=self.token, **values)

    def progress(self, phase: str, step: int, total: int) -> None:
        """Progress callback: every phase change, the last step, and at most every PROGRESS_INTERVAL otherwise."""
        now = time.monotonic()
        if phase != self._phase:
            if self._phase is not None:  # time spent per phase, for /metrics and the run record
                self.phase_seconds[self._phase] = self.phase_seconds.get(self._phase, 0.0) + now - self._phase_started
            self._phase_started = now
        elif step < total and now - self._last_write < PROGRESS_INTERVAL:
            return
        self._phase, self._last_write = phase, now
        self.report(phase=phase, progress_step=step, progress_total=total)

    def should_cancel(self) -> bool:
        """Cancellation check for ltu_core hooks: stop only when every request asked to (read at most every second)."""
        now = time.monotonic()
        if now - self._last_cancel_check >= CANCEL_CHECK_INTERVAL:
            self._last_cancel_check = now
            with self.ctx.database.session() as session:
                self._cancelled = requests.cancel_requested(session, request_ids=self.request_ids)
        return bool(self.request_ids) and self._cancelled.issuperset(self.request_ids)

    def check_cancelled(self) -> None:
        """Between steps: end the requests that asked to be cancelled; raise Cancelled if none is left."""
        self._last_cancel_check = 0.0
        if self.should_cancel():
            raise Cancelled()
        for request_id in [r for r in self.request_ids if r in self._cancelled]:
            self.drop(request_id, CANCELLED, None, "cancelled on request")

    def drop(self, request_id: str, to: str, code: str | None, message: str | None) -> None:
        """End one request of the run as failed or cancelled; the others go on."""
        with self.ctx.database.transaction() as session:
            requests.finish(
                session, request_id=request_id, token=self.token, to=to, error_code=code, error_message=message
            )
        self.request_ids.remove(request_id)
        log.info("request %s: %s%s (its coalesced run goes on)", request_id, to, f" ({code})" if code else "")

    def finish(
        self, to: str, code: str | None, message: str | None, values: dict[str, Any] | None = None
    ) -> JobOutcome:
        """End every request of the run as failed or cancelled (LEASE_LOST if one was not ours any more)."""
        with self.ctx.database.transaction() as session:
            if values:
                try:
                    requests.report(session, request_ids=self.request_ids, token=self.token, **values)
                except LeaseLost:
                    return JobOutcome.LEASE_LOST
            # A list, not a generator: every request is finished, even after one that was lost.
            done = all(
                [
                    requests.finish(
                        session, request_id=r, token=self.token, to=to, error_code=code, error_message=message
                    )
                    for r in self.request_ids
                ]
            )
        log.info("request %s: %s%s", self.leader, to, f" ({code}: {message})" if code else "")
        return JobOutcome(to) if done else JobOutcome.LEASE_LOST
