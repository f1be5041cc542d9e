"""One webhook POST, over a connection pinned to checked addresses and cut at a total deadline.

Built on httpcore (httpx's engine) with a network backend of our own: it connects to the addresses
:func:`~service.core.webhook_urls.resolve_target` checked, never to what a second DNS lookup might return,
while the request keeps the URL's host in its ``Host`` header and, for https, in SNI and the certificate
check. Every socket operation gets what is left of the attempt's :class:`Deadline` as its timeout.
Connections are not kept alive (one delivery, one connection) and proxies from the environment are not used.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpcore

from service.api.webhooks.deadline import Deadline
from service.core.webhook_addresses import IPAddress
from service.core.webhook_urls import Target


class DeliveryError(Exception):
    """The receiver could not be reached or broke the protocol; the message says how."""


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read, write and TLS handshake ends by the deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            # CPython bounds a whole recv by the timeout, also over TLS (however many records it reads).
            self._sock.settimeout(self._deadline.remaining())
            return self._sock.recv(max_bytes)
        except TimeoutError:
            raise self._deadline.exceeded() from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            while buffer:
                self._sock.settimeout(self._deadline.remaining())
                sent = self._sock.send(buffer)
                buffer = buffer[sent:]
        except TimeoutError:
            raise self._deadline.exceeded() from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        try:
            # The handshake, too, is bounded as a whole by the socket timeout.
            self._sock.settimeout(self._deadline.remaining())
            tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
        except TimeoutError:
            self._sock.close()
            raise self._deadline.exceeded() from None
        except OSError as exc:  # ssl.SSLError, certificate errors among them
            self._sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object" and isinstance(self._sock, ssl.SSLSocket):
            return self._sock._sslobj  # type: ignore[attr-defined]
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        return None


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the checked addresses, in order, whatever host httpcore asks for."""

    def __init__(self, addresses: Sequence[IPAddress], deadline: Deadline) -> None:
        self._addresses = addresses
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        failure: OSError | None = None
        for address in self._addresses:
            try:
                sock = socket.create_connection((str(address), port), timeout=self._deadline.remaining())
            except TimeoutError:
                raise self._deadline.exceeded() from None
            except OSError as exc:
                failure = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return _DeadlineStream(sock, self._deadline)
        raise httpcore.ConnectError(str(failure) if failure else "no address to connect to")


def post(
    target: Target,
    addresses: Sequence[IPAddress],
    headers: Mapping[str, str],
    body: bytes,
    *,
    deadline: Deadline,
    ssl_context: ssl.SSLContext,
) -> int:
    """POST ``body`` to ``target`` through one of ``addresses``; the response body is never read.

    Returns:
        The response's status code (redirects are not followed).

    Raises:
        DeadlineExceeded: Connecting, sending and receiving the status line and headers took too long.
        DeliveryError: Connection refused or reset, TLS or certificate failure, a malformed response.
    """
    request_headers = [
        ("host", target.host_header),
        ("content-length", str(len(body))),
        ("user-agent", "wanserve-webhooks"),
        *headers.items(),
    ]
    if target.authorization is not None:
        request_headers.append(("authorization", target.authorization))
    url = httpcore.URL(
        scheme=target.scheme.encode(),
        host=target.host.encode(),
        port=target.port,
        target=target.target.encode(),
    )
    backend = _PinnedBackend(addresses, deadline)
    try:
        with (
            httpcore.ConnectionPool(
                ssl_context=ssl_context, max_keepalive_connections=0, network_backend=backend
            ) as pool,
            pool.stream("POST", url, headers=request_headers, content=body) as response,
        ):
            return response.status
    except (
        httpcore.NetworkError,
        httpcore.TimeoutException,
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,
        OSError,
    ) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
