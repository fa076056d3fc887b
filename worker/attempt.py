"""One execution attempt's hold on its requests: every ledger write of a run goes through here.

An `Attempt` holds the lease `token` of one or more claimed (coalesced) requests. Its writes are
short transactions, so no database session is held while a model trains. A heartbeat thread
(worker/heartbeat.py) renews the lease whatever the job does; every write renews it too, and
raises `LeaseLost` once a request is no longer held by this attempt (the reconciler gave it to
another execution): the caller stops at once and writes nothing more.

An attempt that cannot end its requests itself gives them back to the queue (`release`): after a
passing fault, a broken device, or when its process is stopping.

Light on purpose (no torch): the orchestrator in worker/job.py imports it in the API process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from ledger import requests
from ledger.errors import LeaseLost
from ledger.tables import CANCELLED
from worker.context import JobContext
from worker.faults import Fault, classify
from worker.heartbeat import Heartbeat

log = logging.getLogger("ltu.worker")

PROGRESS_INTERVAL = 0.5  # seconds between progress writes within one phase
CANCEL_CHECK_INTERVAL = 1.0  # seconds between cancellation reads
WRITE_RETRY_DELAYS = (0.5, 2.0, 5.0)  # seconds before each retry of a ledger write hit by a passing fault


class JobOutcome(StrEnum):
    """What one call of the job did with its request."""

    COMPLETED = "completed"  # this call finished it (and published a version)
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # it was already finished or cancelled
    HELD = "held"  # another live execution holds it (e.g. a coalesced run took it along)
    LEASE_LOST = "lease_lost"  # taken over by another execution meanwhile
    RELEASED = "released"  # given back to the queue (a passing fault, a broken device, a shutdown)
    # Not started; the delivery must come again after `retry_after` seconds:
    BUSY = "busy"  # startable, but it kept changing under the claim
    WAITING = "waiting"  # another live run holds its model (runs on one model take turns)
    UNAVAILABLE = "unavailable"  # the claim hit a passing fault (the database briefly unreachable)
    DEVICE_BROKEN = "device_broken"  # this worker's device is broken: another worker must take it

    @property
    def retry_after(self) -> float | None:
        """Seconds after which a delivery that did not start must come again (None: it is done)."""
        return RETRY_AFTER.get(self)


RETRY_AFTER = {
    JobOutcome.BUSY: 2.0,
    JobOutcome.WAITING: 15.0,
    JobOutcome.UNAVAILABLE: 10.0,
    JobOutcome.DEVICE_BROKEN: 5.0,
}


class JobFailed(Exception):
    """The request cannot be executed; `code` and the message land in its record."""

    def __init__(self, code: str, message: str, *, values: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.values = values or {}  # columns to write with the failure (e.g. the failing verification)


class Cancelled(Exception):
    """Every request of the run asked to be cancelled."""


class Interrupted(Exception):
    """The process is stopping: the run's requests go back to the queue."""


class Regroup(Exception):
    """A request left the run after its forget set was built: redo the steps for the others without its samples."""


class Attempt:
    """The lease on `request_ids` (the first led the claim), with progress, cancellation and endings.

    Requests cancelled while running, or found to have nothing left to forget, leave the list
    (`drop`); the run goes on for the others. `stopping()` turning True (the process shuts down)
    interrupts the run at its next check.
    """

    def __init__(
        self, ctx: JobContext, request_ids: list[str], token: str, *, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        self.ctx = ctx
        self.request_ids = list(request_ids)
        self.leader = request_ids[0]
        self.token = token
        self.stopping = stopping
        self.prepared = False  # the forget set of `request_ids` is built: leaving now means Regroup
        self._heartbeat: Heartbeat | None = None
        self.phase_seconds: dict[str, float] = {}
        self._phase: str | None = None
        self._phase_started = time.monotonic()
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancelled: set[str] = set()

    def restart(self) -> None:
        """A new try on the same lease (after a rebase or a regroup): timings start again."""
        self.phase_seconds.clear()
        self._phase = None
        self.prepared = False

    def heartbeat(self) -> Heartbeat:
        """The lease's heartbeat thread for the duration of a `with` block."""

        def renew(session) -> bool:
            held = list(self.request_ids)
            return requests.heartbeat(session, request_ids=held, token=self.token) == len(held)

        self._heartbeat = Heartbeat(
            self.ctx.database, renew, lease_seconds=self.ctx.settings.worker.lease_seconds, name="ltu-heartbeat"
        )
        return self._heartbeat

    def check_lease(self) -> None:
        """LeaseLost once the heartbeat found the lease gone; Interrupted once the process is stopping."""
        if self._heartbeat is not None and self._heartbeat.lost.is_set():
            raise LeaseLost(f"deletion request(s) {', '.join(self.request_ids)} no longer held by this execution")
        if self.stopping():
            raise Interrupted()

    def report(self, **values: Any) -> None:
        """Write columns to every request of the run (LeaseLost if one of them is not ours any more).

        A blip of the database (a passing fault) is ridden out with a few quick retries; a longer
        outage propagates, and the job gives its requests back to the queue.
        """
        for delay in (*WRITE_RETRY_DELAYS, None):
            try:
                with self.ctx.database.transaction() as session:
                    requests.report(session, request_ids=self.request_ids, token=self.token, **values)
                return
            except Exception as exc:
                if delay is None or classify(exc) != Fault.TRANSIENT:
                    raise
                log.warning("request %s: ledger write failed (%s); retrying in %.0f s", self.leader, exc, delay)
                time.sleep(delay)

    def progress(self, phase: str, step: int, total: int) -> None:
        """Progress callback: every phase change, the last step, and at most every PROGRESS_INTERVAL otherwise."""
        self.check_lease()
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
        self.check_lease()
        now = time.monotonic()
        if now - self._last_cancel_check >= CANCEL_CHECK_INTERVAL:
            self._last_cancel_check = now
            with self.ctx.database.session() as session:
                self._cancelled = requests.cancel_requested(session, request_ids=self.request_ids)
        return bool(self.request_ids) and self._cancelled.issuperset(self.request_ids)

    def check_cancelled(self) -> None:
        """Between steps: end the requests that asked to be cancelled; raise Cancelled if none is left.

        Regroup when one left after the forget set was built: its samples must not be unlearned.
        """
        self._last_cancel_check = 0.0
        if self.should_cancel():
            raise Cancelled()
        leaving = [r for r in self.request_ids if r in self._cancelled]
        for request_id in leaving:
            self.drop(request_id, CANCELLED, None, "cancelled on request")
        if leaving and self.prepared:
            raise Regroup()

    def drop(self, request_id: str, to: str, code: str | None, message: str | None) -> None:
        """End one request of the run as failed or cancelled; the others go on."""
        self.request_ids.remove(request_id)  # first: the heartbeat must not miss it once it has ended
        if self.request_ids and request_id == self.leader:
            self.leader = self.request_ids[0]  # the request the published version names as its producer
        with self.ctx.database.transaction() as session:
            requests.finish(
                session, request_id=request_id, token=self.token, to=to, error_code=code, error_message=message
            )
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

    def release(
        self,
        reason: str,
        error: str | None,
        *,
        retry_in: float,
        retry_cap: float,
        give_back_attempt: bool,
        count_retry: bool,
    ) -> JobOutcome:
        """Give every request of the run back to the queue (see requests.release); RELEASED, or LEASE_LOST."""
        max_retries = self.ctx.settings.worker.max_transient_retries
        with self.ctx.database.transaction() as session:
            left = [
                requests.release(
                    session,
                    request_id=r,
                    token=self.token,
                    reason=reason,
                    error=error,
                    retry_in=retry_in,
                    retry_cap=retry_cap,
                    give_back_attempt=give_back_attempt,
                    count_retry=count_retry,
                    max_retries=max_retries,
                )
                for r in self.request_ids
            ]
        log.warning("request %s: %s; back in the queue (%s)", self.leader, reason, ", ".join(map(str, left)))
        return JobOutcome.RELEASED if all(left) else JobOutcome.LEASE_LOST
