"""The HTTP/1.1 protocol the API is served with: uvicorn's h11 protocol, with a deadline for request
headers and errors in our JSON shape.

uvicorn waits for a request's headers forever: a client that opens connections and sends a header
byte now and then (slowloris) holds each one as long as it likes. Here a request whose headers are not
complete ``header_timeout_s`` after its first byte (or after the connection opened) gets a 408 and the
connection is closed. The body has its own deadline (``BodyLimitMiddleware``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.error_handlers import error_body


def _raw_response(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def _watch_headers(self) -> None:
        """Run the timer exactly while a request's headers are awaited (before its first one, and between
        requests of a kept-alive connection, where uvicorn's keep-alive timer also runs)."""
        awaiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if awaiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)
        elif not awaiting:
            self._stop_header_timer()

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.transport.write(
            _raw_response(
                408,
                "Request Timeout",
                f"The request headers did not arrive within {self.header_timeout_s:g} s.",
                "request_timeout",
            )
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a malformed request in plain text; every answer of ours is JSON.
        self.transport.write(_raw_response(400, "Bad Request", msg, "invalid_http_request"))
        self.transport.close()


def guarded_protocol(header_timeout_s: float) -> type[GuardedH11Protocol]:
    """The protocol class to give uvicorn (``uvicorn.run(app, http=...)``)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": header_timeout_s})
