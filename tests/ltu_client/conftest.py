"""The client against a scripted service (httpx.MockTransport), run as Client and as AsyncClient:
every test taking `service` runs twice, once per client, so the two cannot drift apart."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from ltu_client import AsyncClient, Client

BASE_URL = "http://ltu.test"
API_KEY = "ltu_test-key"

Answer = httpx.Response | Exception


class ScriptedService:
    """Answers each request with the next scripted answer (the last one repeats), an httpx.Response or an
    exception to raise (a lost connection); records the requests and the client's waits, never sleeping."""

    def __init__(self, asynchronous: bool) -> None:
        self.asynchronous = asynchronous
        self.answers: list[Answer] = []
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.sleeps: list[float] = []

    def script(self, *answers: Answer) -> None:
        self.answers = list(answers)

    @staticmethod
    def answer(status: int, body: Any = None, **headers: str) -> httpx.Response:
        """A JSON answer (problem+json from 400 on); `Retry_After="3"` is the header Retry-After: 3."""
        content_type = "application/problem+json" if status >= 400 else "application/json"
        headers = {k.replace("_", "-"): v for k, v in headers.items()}
        return httpx.Response(
            status, json=body if body is not None else {}, headers=headers | {"content-type": content_type}
        )

    @staticmethod
    def problem(status: int, code: str, **headers: str) -> httpx.Response:
        body = {"type": "about:blank", "title": code.replace("_", " "), "status": status, "code": code}
        return ScriptedService.answer(status, body, **headers)

    def sent_json(self, index: int = -1) -> Any:
        """The JSON body of a request the service received (the last by default)."""
        return json.loads(self.bodies[index])

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.read())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def call(self, operation: str, *args: Any, **options: Any) -> Any:
        """Run one operation of a fresh client (`options` that are client options go to its constructor)."""
        client_options = {k: options.pop(k) for k in ("max_attempts", "max_wait") if k in options}
        transport = httpx.MockTransport(self._answer)
        if not self.asynchronous:
            with httpx.Client(transport=transport, base_url=BASE_URL) as http:
                client = Client(api_key=API_KEY, http=http, sleep=self.sleeps.append, **client_options)
                return getattr(client, operation)(*args, **options)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        async def run() -> Any:
            async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
                client = AsyncClient(api_key=API_KEY, http=http, sleep=sleep, **client_options)
                return await getattr(client, operation)(*args, **options)

        return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def service(request) -> ScriptedService:
    return ScriptedService(asynchronous=request.param == "async")
