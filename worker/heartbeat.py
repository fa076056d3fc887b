"""A job's heartbeat: renews its lease on a timer, whatever the job is doing.

A job writes progress only now and then: preparing a large dataset, fitting the verification's
attackers or training one long reference model can stay silent for longer than the lease. Tied
to progress writes, the heartbeat would go stale and the reconciler would take live work away.
This thread renews the lease every quarter lease, in its own short transaction, so only a process
that died (or lost the database for longer than the lease) lets its lease expire.

A failed renewal (the database briefly down) is logged and tried again at the next tick; the
lease has three more ticks of slack. When a renewal finds the lease no longer held, `lost` is
set and the job stops at its next check (`Attempt` and `ReferenceLease` read it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ledger.db import Database

log = logging.getLogger("ltu.worker")

TICKS_PER_LEASE = 4


class Heartbeat:
    """Context manager: `renew(session)` every `lease_seconds / 4` in a daemon thread while the block runs.

    `renew` returns False when the execution no longer holds its lease.
    """

    def __init__(self, database: Database, renew: Callable[..., bool], *, lease_seconds: float, name: str) -> None:
        self.database = database
        self.renew = renew
        self.interval = lease_seconds / TICKS_PER_LEASE
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def beat(self) -> None:
        """One renewal now."""
        with self.database.transaction() as session:
            held = self.renew(session)
        if not held:
            self.lost.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and not self.lost.is_set():
            try:
                self.beat()
            except Exception as exc:  # the next tick tries again; the lease has slack for three misses
                log.warning("heartbeat failed (%s: %s); retrying in %.0f s", type(exc).__name__, exc, self.interval)
