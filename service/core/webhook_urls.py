"""Webhook URLs: parsed once into a :class:`Target`, checked against internal hosts, redacted for logs.

A URL is checked twice: by :func:`validate_webhook_url` when a video names it (no I/O), and by
:func:`resolve_target` right before each delivery, after DNS, because a name may later resolve to an
internal address. The sender then connects only to the addresses :func:`resolve_target` checked.
"""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address
from urllib.parse import quote, unquote, urlsplit

from service.core.errors import InvalidRequest
from service.core.webhook_addresses import (
    IPAddress,
    is_internal_address,
    is_internal_name,
    numeric_host,
    parse_resolved,
)

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

Resolver = Callable[[str, int], Iterable[str]]
"""``(host, port) -> addresses as text``; :func:`system_resolver` asks ``getaddrinfo``."""

_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")
# Characters kept as they are in the request target; anything else (spaces, non-ASCII) is percent-encoded.
_TARGET_SAFE = "/?#[]@!$&'()*+,;=:%-._~"


def invalid_url(reason: str) -> InvalidRequest:
    return InvalidRequest(f"webhook_url {reason}.", param="webhook_url", code="invalid_webhook_url")


@dataclass(frozen=True)
class Target:
    """Where one webhook goes, as the sender needs it: no further URL parsing happens after this."""

    scheme: str
    host: str
    """Lower case ASCII, without brackets or a trailing dot."""
    port: int
    target: str
    """Path and query, percent-encoded: the HTTP request target."""
    address: IPAddress | None
    """The address when the host is an IP literal; None for a name."""
    username: str | None = None
    password: str | None = None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if isinstance(self.address, IPv6Address) else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def authorization(self) -> str | None:
        """``Basic`` credentials from the URL's userinfo, as a browser would send them."""
        if self.username is None:
            return None
        pair = f"{unquote(self.username)}:{unquote(self.password or '')}"
        return "Basic " + base64.b64encode(pair.encode()).decode()


def parse_target(url: str) -> Target:
    """Check a URL's form (no I/O, no address policy) and take it apart.

    Accepted: absolute ``http``/``https`` URLs of at most 2048 characters, without whitespace, control
    characters or backslashes, whose host is an ASCII name (``xn--`` for international ones), a dotted-decimal
    IPv4 address or a bracketed IPv6 address. Other spellings of IPv4 addresses (``127.1``, ``0x7f000001``)
    are refused: HTTP clients disagree on what they mean.

    Raises:
        InvalidRequest: ``code="invalid_webhook_url"``, ``param="webhook_url"``.
    """
    if len(url) > MAX_URL_LENGTH:
        raise invalid_url(f"must be at most {MAX_URL_LENGTH} characters")
    if any(char.isspace() or ord(char) < 0x20 or char in "\x7f\\" for char in url):
        raise invalid_url("must not contain whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise invalid_url(f"is not a valid URL ({exc})") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise invalid_url("must start with http:// or https://")
    if not host:
        raise invalid_url("must name a host")
    if parts.netloc.count("@") > 1:
        raise invalid_url("must write an @ inside the credentials as %40")
    if port == 0:
        raise invalid_url("must not use port 0")
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    host, address = _parse_host(host, bracketed)
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return Target(
        scheme=parts.scheme,
        host=host,
        port=port or DEFAULT_PORTS[parts.scheme],
        target=target,
        address=address,
        username=parts.username if parts.username or parts.password else None,  # "http://@host/": none
        password=parts.password,
    )


def _parse_host(host: str, bracketed: bool) -> tuple[str, IPAddress | None]:
    if bracketed:
        if "%" in host:
            raise invalid_url("must not give an IPv6 zone")
        try:
            return host, IPv6Address(host)
        except ValueError:
            raise invalid_url(f"has an invalid IPv6 address ({host})") from None
    if not host.isascii():
        raise invalid_url("must write an international host name in its xn-- form")
    name = host.removesuffix(".")
    if not _NAME.fullmatch(name):
        raise invalid_url(f"has an invalid host name ({host})")
    try:
        address = numeric_host(name)
    except ValueError:
        raise invalid_url(f"has an invalid IP address ({host})") from None
    if address is not None and str(address) != host:
        raise invalid_url(f"must write the IP address {address} in dotted-decimal form")
    return name, address


def refuse_internal(target: Target) -> None:
    """Refuse an IP literal that is internal, or a name that can only be internal (no DNS).

    Raises:
        InvalidRequest: ``code="invalid_webhook_url"``.
    """
    if target.address is not None:
        if is_internal_address(target.address):
            raise invalid_url(f"must point to a public address, not {target.address}")
    elif is_internal_name(target.host):
        raise invalid_url(f"must name a public host, not {target.host}")


def validate_webhook_url(url: str, *, allow_private: bool = False) -> str:
    """Accept a receiver URL when a video names it: its form, and that it does not point inside our network.

    Args:
        url: The URL as the client sent it.
        allow_private: Accept loopback, private and other internal hosts and addresses (for receivers on
            the operator's own network; WANSERVE_WEBHOOK_ALLOW_PRIVATE).

    Returns:
        The URL, unchanged.

    Raises:
        InvalidRequest: ``code="invalid_webhook_url"``, ``param="webhook_url"``.
    """
    target = parse_target(url)
    if not allow_private:
        refuse_internal(target)
    return url


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` finds for ``host`` (TCP)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for *_, sockaddr in found]


def resolve_target(
    target: Target, *, allow_private: bool = False, resolver: Resolver = system_resolver
) -> list[IPAddress]:
    """The addresses to connect to for ``target``, all of them checked: the sender connects to no other.

    Args:
        target: From :func:`parse_target`.
        allow_private: Accept internal names and addresses.
        resolver: Looks a name up (injectable for tests); not called for an IP literal.

    Returns:
        The addresses, in the resolver's order, without repeats.

    Raises:
        InvalidRequest: The host, or any one of its addresses, is internal (an attacker's DNS may mix a
            private address in with public ones).
        OSError: The name does not resolve (``socket.gaierror``) or resolved to nothing.
    """
    if not allow_private:
        refuse_internal(target)
    if target.address is not None:
        return [target.address]
    addresses: list[IPAddress] = []
    for text in resolver(target.host, target.port):
        try:
            address = parse_resolved(text)
        except ValueError:
            raise invalid_url(f"host {target.host} resolved to something that is no address") from None
        if not allow_private and is_internal_address(address):
            raise invalid_url(f"host {target.host} resolves to an internal address ({address})")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError(f"{target.host} resolved to no address")
    return addresses


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` for logs: credentials become ``***``, a query becomes ``?***``.

    Never raises: an unparseable URL comes back as ``<unparseable URL>``.
    """
    try:
        parts = urlsplit(url)
        hostport = parts.netloc.rpartition("@")[2]
        userinfo = "***@" if "@" in parts.netloc else ""
        path = parts.path
        if "@" in path or not parts.netloc:  # credentials where no parser looks for them: hide it all
            path = "/***" if path else ""
        query = "?***" if parts.query else ""
        return f"{parts.scheme}://{userinfo}{hostport}{path}{query}"
    except ValueError:
        return "<unparseable URL>"


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's credentials and query replaced by ``***``, for errors that may quote them."""
    try:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        password = parts.password or ""
    except ValueError:
        return text
    # The password on its own too (an error may quote it decoded), unless it is too short to replace safely.
    secrets = [userinfo, parts.query, password if len(password) >= 4 else ""]
    for secret in filter(None, secrets):
        for spelling in {secret, unquote(secret)}:
            text = text.replace(spelling, "***")
    return text
