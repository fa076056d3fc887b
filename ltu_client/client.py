"""The two clients: the operations of ltu_client.operations performed with httpx, synchronously
(`Client`) or awaited (`AsyncClient`). Each performs the two protocol steps and nothing else."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from ltu_client.operations import Operations
from ltu_client.protocol import ApiError, Send, Sleep, Steps, built

__all__ = ["ApiError", "AsyncClient", "Client"]


def _synchronous(operation: Callable[..., Steps[Any]]) -> Callable[..., Any]:
    @functools.wraps(operation)
    def method(self: Client, *args: Any, **kwargs: Any) -> Any:
        return self._drive(operation(self, *args, **kwargs))

    return method


def _asynchronous(operation: Callable[..., Steps[Any]]) -> Callable[..., Any]:
    @functools.wraps(operation)
    async def method(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        return await self._drive(operation(self, *args, **kwargs))

    return method


class Client(Operations, driver=_synchronous):
    """A client for one service URL and API key. Pass `http` to reuse an httpx.Client (tests pass
    Starlette's TestClient).

    Answers 429 and 503, and for idempotent calls a lost connection, are retried: at most
    `max_attempts` tries and `max_wait` seconds of waiting in all, each wait the answer's Retry-After
    or else an exponential backoff with jitter (`sleep` does the waiting; tests pass their own).
    Every submission carries an Idempotency-Key, the same on each try, so a retry never submits twice.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
        max_attempts: int = 5,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(api_key, max_attempts=max_attempts, max_wait=max_wait)
        self._owns_http = http is None
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (if this client opened it)."""
        if self._owns_http:
            self.http.close()

    def _drive(self, steps: Steps[Any]) -> Any:
        outcome = None
        try:
            while True:
                outcome = self._perform(steps.send(outcome))
        except StopIteration as done:
            return done.value

    def _perform(self, step: Send | Sleep) -> Any:
        if isinstance(step, Sleep):
            return self._sleep(step.seconds)
        try:
            with built(self.http, step.call, self.headers) as request:
                response = self.http.send(request, stream=True)
            try:
                if step.into is not None and response.is_success:
                    with open(step.into, "wb") as f:
                        for chunk in response.iter_bytes():
                            f.write(chunk)
                else:
                    response.read()
            finally:
                response.close()
        except httpx.TransportError as exc:
            return exc
        return response


class AsyncClient(Operations, driver=_asynchronous):
    """The asyncio twin of `Client`: the same operations and arguments, each awaited.

    async with AsyncClient(url, api_key) as client:
        erasure = await client.wait_erasure((await client.submit_erasure(["customer-1234"])).id)
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
        max_attempts: int = 5,
        max_wait: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(api_key, max_attempts=max_attempts, max_wait=max_wait)
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)
        self._sleep = sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (if this client opened it)."""
        if self._owns_http:
            await self.http.aclose()

    async def _drive(self, steps: Steps[Any]) -> Any:
        outcome = None
        try:
            while True:
                outcome = await self._perform(steps.send(outcome))
        except StopIteration as done:
            return done.value

    async def _perform(self, step: Send | Sleep) -> Any:
        if isinstance(step, Sleep):
            return await self._sleep(step.seconds)
        try:
            with built(self.http, step.call, self.headers) as request:
                response = await self.http.send(request, stream=True)
            try:
                if step.into is not None and response.is_success:
                    with open(step.into, "wb") as f:
                        async for chunk in response.aiter_bytes():
                            f.write(chunk)
                else:
                    await response.aread()
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            return exc
        return response
