"""The HTTP/1.1 protocol the API is served with: uvicorn's httptools protocol (h11 where httptools is
not installed), with a deadline for request headers, a bound on their size, and errors in our JSON shape.

uvicorn waits for a request's headers forever: a client that opens connections and sends a header
byte now and then (slowloris) holds each one as long as it likes. Here a request whose headers are not
complete ``header_timeout_s`` after its first byte (or after the connection opened) gets a 408 and the
connection is closed. The body has its own deadline (``BodyLimitMiddleware``). A malformed request,
or a request line and headers over ``MAX_HEAD_BYTES``, gets a 400.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed (uvicorn imports it there)
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from service.api.error_handlers import error_bytes
from service.core.errors import InvalidRequest, RequestTimeout, WanserveError
from service.core.settings import get_settings

MAX_HEAD_BYTES = 16 * 1024
"""A request line and headers longer than this are refused (h11's own bound, kept with httptools)."""


def _raw_response(exc: WanserveError) -> bytes:
    body = error_bytes(exc)
    head = (
        f"HTTP/1.1 {exc.status} {HTTPStatus(exc.status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _HeaderDeadline:
    """What both protocols add to uvicorn's: the header deadline and JSON answers to broken requests.

    ``header_timeout_s`` None: ``WANSERVE_HEADER_TIMEOUT_S`` from the settings (how the processes of
    ``wanserve api --workers N``, which uvicorn starts from an import path, get it).
    """

    header_timeout_s: float | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._timeout_s = self.header_timeout_s or get_settings().header_timeout_s

    def _awaiting_headers(self) -> bool:
        """Whether a request's headers are awaited: before the first request, and between requests."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._watch_headers()

    def _watch_headers(self) -> None:
        """Run the timer exactly while a request's headers are awaited (before its first one, and between
        requests of a kept-alive connection, where uvicorn's keep-alive timer also runs)."""
        awaiting = self._awaiting_headers() and not self.transport.is_closing()
        if awaiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self._timeout_s, self._headers_too_slow)
        elif not awaiting:
            self._stop_header_timer()

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        self.transport.write(
            _raw_response(RequestTimeout(f"The request headers did not arrive within {self._timeout_s:g} s."))
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a malformed request in plain text; every answer of ours is JSON.
        self.transport.write(_raw_response(InvalidRequest(msg, code="invalid_http_request")))
        self.transport.close()


class GuardedH11Protocol(_HeaderDeadline, H11Protocol):
    """uvicorn's pure-Python protocol (h11 itself bounds a head still incomplete to 16 KiB)."""

    def _awaiting_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_HeaderDeadline, HttpToolsProtocol):
        """uvicorn's protocol on httptools (llhttp, in C): less CPU per request than h11's pure Python."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            # httptools bounds nothing (it buffers a header value as long as it grows): count what
            # arrives while a request's head is incomplete, as h11 bounds its buffer.
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self.send_400_response("Invalid HTTP request received.")

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head = True
            super().on_message_complete()


def guarded_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (``uvicorn.run(app, http=...)``)."""
    base = served_protocol()
    return type(base.__name__, (base,), {"header_timeout_s": header_timeout_s})


def served_protocol() -> type[asyncio.Protocol]:
    """The protocol the API is served with: httptools where it is installed, else h11."""
    return GuardedHttpToolsProtocol if HttpToolsProtocol is not None else GuardedH11Protocol


def served_protocol_path() -> str:
    """:func:`served_protocol` as an import path, for uvicorn's worker processes."""
    return f"{__name__}:{served_protocol().__name__}"
