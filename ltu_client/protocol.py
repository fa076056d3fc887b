"""The client's exchanges with the service, free of I/O: what to send, when to retry, what an answer means.

Every operation is a generator that yields steps (`Send` one HTTP attempt, `Sleep`) and returns its
result; `Client` performs the steps with httpx.Client and time.sleep, `AsyncClient` with
httpx.AsyncClient and asyncio.sleep. So the retry rules, the idempotency keys and the parsing exist
once, and the two clients cannot drift apart.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

RETRIED_STATUSES = (429, 503)  # the service refused before doing anything: rate limited, or not available now
FIRST_BACKOFF = 0.5  # seconds before the first retry when the answer names no Retry-After; doubled per retry
MAX_BACKOFF = 8.0


class ApiError(Exception):
    """An error answer of the service (its problem document), or no answer at all (status 0)."""

    def __init__(
        self, status: int, title: str, detail: str | None = None, problem: dict[str, Any] | None = None
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.problem = problem or {}
        self.code = self.problem.get("code")
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")


@dataclass(frozen=True)
class Upload:
    """A multipart file field, opened afresh for each attempt so that a retry sends the whole file again."""

    field: str
    path: Path
    content_type: str


@dataclass(frozen=True)
class Call:
    """One request to the service, as every attempt at it sends it (the same Idempotency-Key included)."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] | None = None
    upload: Upload | None = None
    retry: bool = True

    @property
    def idempotent(self) -> bool:
        """Whether sending it twice does what sending it once does, so a lost answer may be asked for again."""
        return self.method in ("GET", "HEAD") or "Idempotency-Key" in self.headers


@dataclass(frozen=True)
class Send:
    """Step: one attempt at `call`; the driver answers the httpx.Response (its body read, or written to `into`
    when 2xx) or the httpx.TransportError it met."""

    call: Call
    into: Path | None = None


@dataclass(frozen=True)
class Sleep:
    """Step: wait this many seconds (the client's sleep function, which tests replace)."""

    seconds: float


Steps = Generator[Send | Sleep, Any, T]


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for: delay-seconds or an HTTP date (RFC 9110 §10.2.3); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """At most `attempts` tries of a call and `max_wait` seconds of waiting between them, in all.

    429 and 503 are retried for every call (the service did nothing); a lost answer or connection only
    for idempotent calls. The wait is the answer's Retry-After, else an exponential backoff with full
    jitter (so that clients refused together do not come back together). A wait that would pass
    `max_wait` is not started: the error comes back at once.
    """

    attempts: int = 5
    max_wait: float = 60.0

    def delay(self, call: Call, outcome: httpx.Response | httpx.TransportError, attempt: int, waited: float):
        """Seconds to wait before attempt `attempt + 1`, or None: this outcome is final."""
        if not call.retry or attempt >= self.attempts:
            return None
        if isinstance(outcome, httpx.TransportError):
            if not call.idempotent:
                return None
            asked = None
        elif outcome.status_code in RETRIED_STATUSES:
            asked = retry_after(outcome.headers.get("Retry-After"))
        else:
            return None
        if asked is None:
            asked = random.uniform(0.0, min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempt - 1)))
        return asked if waited + asked <= self.max_wait else None


def exchange(call: Call, policy: RetryPolicy, into: Path | None = None) -> Steps[httpx.Response]:
    """Send `call` until its outcome is final under `policy`; the 2xx answer, else ApiError."""
    attempt, waited = 1, 0.0
    while True:
        outcome = yield Send(call, into)
        delay = policy.delay(call, outcome, attempt, waited)
        if delay is None:
            return checked(outcome)
        yield Sleep(delay)
        attempt, waited = attempt + 1, waited + delay


@contextmanager
def built(http: httpx.Client | httpx.AsyncClient, call: Call, auth: dict[str, str]) -> Iterator[httpx.Request]:
    """The httpx request of one attempt at `call` (its upload open while it is sent)."""
    headers = {**auth, **call.headers}
    if call.upload is None:
        yield http.build_request(call.method, call.path, params=call.params, json=call.json, headers=headers)
        return
    with open(call.upload.path, "rb") as f:
        files = {call.upload.field: (call.upload.path.name, f, call.upload.content_type)}
        yield http.build_request(
            call.method, call.path, params=call.params, data=call.data, files=files, headers=headers
        )


def checked(outcome: httpx.Response | httpx.TransportError) -> httpx.Response:
    """The answer if it is 2xx; else ApiError with the problem document (status 0: no answer at all)."""
    if isinstance(outcome, httpx.TransportError):
        raise ApiError(0, "service unreachable", f"{type(outcome).__name__}: {outcome}") from outcome
    if outcome.status_code < 400:
        return outcome
    try:
        problem = outcome.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    raise ApiError(outcome.status_code, problem.get("title") or outcome.reason_phrase, problem.get("detail"), problem)
