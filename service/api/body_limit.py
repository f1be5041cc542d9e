"""Refuse request bodies over a size limit (413) or slower than a deadline (408), before they are read
into memory or hold a worker thread."""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.error_handlers import error_bytes
from service.core.errors import RequestTimeout, RequestTooLarge, WanserveError


class BodyLimitMiddleware:
    """``max_bytes`` bounds the body however it is sent (declared length or chunked); ``timeout_s`` bounds
    the time from the request's start to its last body byte (a client trickling bytes is cut off)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _reject(send, self._too_large())
            return
        seen = 0
        body_done = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise self._too_slow() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()
                body_done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except (RequestTooLarge, RequestTimeout) as exc:
            await _reject(send, exc)

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(f"The request body is larger than {self.max_bytes} bytes.")

    def _too_slow(self) -> RequestTimeout:
        return RequestTimeout(f"The request body did not arrive within {self.timeout_s:g} s.")


async def _reject(send: Send, exc: WanserveError) -> None:
    body = error_bytes(exc)
    headers = {"content-type": "application/json", "content-length": str(len(body)), **exc.headers}
    raw_headers = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
