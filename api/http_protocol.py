"""The HTTP/1.1 protocol `ltu serve` runs: uvicorn's h11 one, answering unparseable requests with problem+json.

A request whose framing h11 refuses (`Content-Length: -5`, a header line without a colon, a
request line that is not HTTP) never reaches the app, so neither its problem handlers nor its
request id. uvicorn answers those with a bare text/plain 400; this subclass sends the problem
document every other error gets, with an `X-Request-ID` a client can quote. The connection still
closes after it: once the framing is wrong, where the next request starts is unknown.

Used by name (`http="api.http_protocol:ProblemH11Protocol"`), so every `--workers` process loads
it; h11 rather than httptools, so the answer does not depend on what else is installed.
"""

from __future__ import annotations

import json
import uuid

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.errors import PROBLEM_JSON, TYPE_BASE
from api.telemetry import REQUEST_ID_HEADER


class ProblemH11Protocol(H11Protocol):
    """uvicorn's h11 protocol whose answer to a malformed request is a problem document."""

    def send_400_response(self, msg: str) -> None:
        request_id = uuid.uuid4().hex
        self.logger.warning("malformed HTTP request refused (request id %s)", request_id)
        body = json.dumps(
            {
                "type": TYPE_BASE + "malformed_request",
                "title": "Bad Request",
                "status": 400,
                "detail": "the request is not valid HTTP/1.1 (its framing or headers are malformed)",
                "code": "malformed_request",
            }
        ).encode()
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()
