"""Request body limits, enforced as bodies arrive: 413 problem+json before a body is parsed or held.

Uploads have their own, larger limits per route; every other body (JSON, forms) gets the default
(LTU_MAX_BODY_BYTES). A declared Content-Length over the limit is refused before a byte is read;
a body without one (chunked) is counted as it streams and refused as soon as the count passes the
limit, so at most one extra chunk is ever buffered.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from api.errors import PROBLEM_JSON, TYPE_BASE

Limit = Callable[[], int]  # read per request: tests and settings may change it after start-up


def body_size_guard(routes: dict[tuple[str, str], Limit], *, default: Limit):
    """ASGI middleware factory: bodies of (method, path) in `routes` are held to its limit, others to `default`."""

    class BodySizeGuard:
        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            limit = routes.get((scope.get("method", ""), scope.get("path", "")), default)()
            declared = dict(scope.get("headers") or []).get(b"content-length")
            if declared is not None and _states_more_than(declared, limit):
                await _send_413(send, scope, limit)
                return
            state = {"received": 0, "over": False, "started": False}

            async def counting_receive():
                message = await receive()
                if message["type"] == "http.request":
                    state["received"] += len(message.get("body", b""))
                    if state["received"] > limit:
                        state["over"] = True
                        return {"type": "http.disconnect"}
                return message

            async def guarded_send(message):
                if state["over"]:  # the app answers a truncated body: answer 413 instead
                    if not state["started"]:
                        state["started"] = True
                        await _send_413(send, scope, limit)
                    return
                state["started"] = True
                await send(message)

            try:
                await self.app(scope, counting_receive, guarded_send)
            except Exception:
                if not state["over"]:
                    raise
            if state["over"] and not state["started"]:
                await _send_413(send, scope, limit)

    return BodySizeGuard


def _states_more_than(declared: bytes, limit: int) -> bool:
    """Whether a Content-Length value states more than `limit` bytes; one that is not ASCII digits states nothing.

    Compared by its significant digits first: int() refuses values of 4,300 digits and more.
    """
    if not declared.isdigit():  # bytes.isdigit() is ASCII-only
        return False
    digits = declared.lstrip(b"0") or b"0"
    return len(digits) > len(str(limit)) or int(digits) > limit


async def _send_413(send, scope, limit: int) -> None:
    body = json.dumps(
        {
            "type": TYPE_BASE + "payload_too_large",
            "title": "Content Too Large",
            "status": 413,
            "detail": f"the request body exceeds the limit of {limit} bytes",
            "instance": scope.get("path", ""),
            "code": "payload_too_large",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
