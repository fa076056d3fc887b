"""The edge: what no request may carry, refused once, before any route or database sees it.

Values that one ledger backend stores and the other refuses, or that the API stores and later cannot
sign, must get the same answer everywhere. So every path, query parameter, form field and JSON body is
held to one rule set here, and each breach is a 422 problem+json whose `code` names it and whose
`errors[0].loc` says where (the value itself is never echoed: it may be a subject id):

- `nul_character`: U+0000 in any text (Postgres cannot store it; SQLite can);
- `lone_surrogate`: a `\\ud800`–`\\udfff` escape that is not half of a pair (not text: it has no UTF-8);
- `non_finite_number`: NaN, Infinity or a number that overflows to it (`1e400`): no canonical JSON;
- `integer_out_of_range`: an integer beyond ±2^53 (I-JSON, RFC 7493): no canonical JSON either;
- `nesting_too_deep`: JSON arrays and objects nested deeper than MAX_JSON_DEPTH.

Paths, queries and JSON bodies are checked by the `edge_guard` middleware (before FastAPI parses a
body: a body nested too deep for Python's parser gets the same 422 as one nested 33 levels); form
fields by the app-wide `checked_form` dependency, since only the route's own parse reads a multipart
upload once. JSON that does not parse at all is left to FastAPI (422 `validation_error`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from api.errors import ProblemError, problem_response
from ledger.canonical import MAX_SAFE_INTEGER

MAX_JSON_DEPTH = 32  # arrays and objects, the body itself counting as 1
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")

Loc = tuple[str | int, ...]


class _Unrepresentable:
    """A number json.loads met that has no canonical JSON form; the walk reports it with its path."""

    def __init__(self, code: str, what: str) -> None:
        self.code, self.what = code, what


def _refusal(code: str, loc: Loc, what: str) -> ProblemError:
    where = ".".join(str(part) for part in loc)
    return ProblemError(
        422,
        f"{where}: {what}",
        code=code,
        errors=[{"loc": list(loc), "msg": what, "type": code}],
    )


def check_text(value: str, loc: Loc) -> None:
    """Refuse a NUL character or a lone surrogate in `value` (ProblemError 422)."""
    found = _NOT_TEXT.search(value)
    if found is None:
        return
    if found.group() == "\x00":
        raise _refusal("nul_character", loc, "NUL characters (U+0000) are not accepted in text")
    raise _refusal("lone_surrogate", loc, "a lone UTF-16 surrogate (\\ud800-\\udfff not part of a pair) is not text")


def load_json(raw: bytes | str, loc: Loc = ("body",)) -> Any:
    """Parse JSON held to the edge's rules: ValueError if it does not parse, ProblemError (422) if it breaks one."""
    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise _refusal(
            "nesting_too_deep", loc, f"JSON may nest arrays and objects at most {MAX_JSON_DEPTH} levels deep"
        ) from None
    _check_tree(value, loc)
    return value


def _constant(name: str) -> _Unrepresentable:
    return _Unrepresentable("non_finite_number", f"{name} is not a number JSON can carry")


def _float(text: str) -> float | _Unrepresentable:
    number = float(text)
    if math.isfinite(number):
        return number
    return _Unrepresentable("non_finite_number", "a number beyond the double range (it would be infinite)")


def _int(text: str) -> int | _Unrepresentable:
    # The length test first: int() of a 5,000-digit string is itself refused (and slow).
    if len(text.lstrip("-")) <= 16 and abs(number := int(text)) <= MAX_SAFE_INTEGER:
        return number
    return _Unrepresentable("integer_out_of_range", "integers must lie within ±2^53 (9007199254740992)")


def _check_tree(value: Any, loc: Loc) -> None:
    # Iterative: depth is what is being checked, so the check itself must not recurse.
    stack: list[tuple[Any, Loc, int]] = [(value, loc, 1)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, str):
            check_text(node, where)
        elif isinstance(node, _Unrepresentable):
            raise _refusal(node.code, where, node.what)
        elif isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _refusal(
                    "nesting_too_deep", where, f"JSON may nest arrays and objects at most {MAX_JSON_DEPTH} levels deep"
                )
            stack.extend((child, (*where, key), depth + 1) for key, child in _children(node, where))


def _children(node: dict | list, where: Loc) -> Iterator[tuple[str | int, Any]]:
    if isinstance(node, list):
        yield from enumerate(node)
        return
    for key, child in node.items():
        check_text(key, where)
        yield key, child


def _is_json(content_type: str | None) -> bool:
    # The media types FastAPI reads as JSON (fastapi.routing): none at all, application/json, application/*+json.
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _check_url(scope: dict) -> None:
    check_text(scope.get("path", ""), ("path",))
    # Parsed as Starlette parses it, so the values checked are the values the route gets.
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        check_text(name, ("query",))
        check_text(value, ("query", name))


def edge_guard(app):
    """ASGI middleware: paths, query strings and JSON bodies held to the edge's rules (422 problem+json)."""

    async def guard(scope, receive, send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1") or None
        messages: list[dict] = []
        try:
            _check_url(scope)
            if scope["method"] in BODY_METHODS and _is_json(content_type):
                messages = await _read_body(receive)
                _check_json_body(messages)
        except ProblemError as exc:
            response = problem_response(Request(scope), exc.status, exc.detail, code=exc.code, errors=exc.errors)
            await response(scope, receive, send)
            return
        await app(scope, _replay(messages, receive), send)

    return guard


async def _read_body(receive) -> list[dict]:
    # The body size guard outside this middleware bounds what is held here (LTU_MAX_BODY_BYTES).
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _check_json_body(messages: list[dict]) -> None:
    if not messages or messages[-1]["type"] != "http.request":
        return  # the client left, or the size guard cut it off: the app answers that
    body = b"".join(m.get("body", b"") for m in messages)
    if not body:
        return
    try:
        load_json(body)
    except ValueError:
        return  # not JSON at all: FastAPI's own parse answers it


def _replay(messages: list[dict], receive):
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed


async def checked_form(request: Request) -> None:
    """App-wide dependency: every text field of a form body held to the edge's rules.

    A route that reads a form has parsed it already (Starlette keeps it on the request); any other
    route with a form body parses it here, within the body size limit.
    """
    if request.method not in BODY_METHODS:
        return
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in FORM_TYPES:
        return
    for name, value in (await request.form()).multi_items():
        check_text(name, ("body",))
        if isinstance(value, str):
            check_text(value, ("body", name))
