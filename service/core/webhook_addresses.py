"""Which hosts and IP addresses a webhook may not reach: loopback, private, link-local, metadata and the like.

Pure functions over host names and :mod:`ipaddress` objects, with no I/O. They decide what is *internal*;
:mod:`service.core.webhook_urls` refuses such targets when the URL is accepted and again after DNS resolution.
"""

from __future__ import annotations

import re
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

IPAddress = IPv4Address | IPv6Address

# What ``is_global`` lets through on some Python versions (3.11's table is older than the IANA registry).
_EXTRA_INTERNAL: tuple[IPv4Network | IPv6Network, ...] = (
    IPv4Network("0.0.0.0/8"),  # "this network"; 0.0.0.0 reaches the local host
    IPv4Network("100.64.0.0/10"),  # carrier-grade NAT, also Alibaba Cloud's metadata (100.100.100.200)
    IPv4Network("192.0.0.0/24"),  # IETF protocol assignments, also Oracle Cloud's metadata (192.0.0.192)
    IPv4Network("198.18.0.0/15"),  # benchmarking
    IPv6Network("64:ff9b:1::/48"),  # local-use NAT64
    IPv6Network("100::/64"),  # discard-only
    IPv6Network("2001::/23"),  # IETF protocol assignments, Teredo among them
    IPv6Network("2001:db8::/32"),  # documentation
    IPv6Network("3fff::/20"),  # documentation
    IPv6Network("fec0::/10"),  # deprecated site-local
)
_NAT64 = IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = IPv6Network("::/96")  # deprecated ::a.b.c.d, and :: and ::1

INTERNAL_SUFFIXES: tuple[str, ...] = (
    "localhost",
    "internal",  # metadata.google.internal, *.ec2.internal, ...
    "local",  # mDNS
    "localdomain",
    "home.arpa",
    "arpa",
    "lan",
    "intranet",
    "corp",
    "home",
    "private",
)
"""Names under these labels (and the labels themselves) name hosts of a private network only."""

_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


def is_internal_address(address: IPAddress) -> bool:
    """Whether ``address`` is anything but a public unicast address.

    IPv6 forms that carry an IPv4 address (mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4
    ``2002::/16``) are judged by that IPv4 address; the deprecated IPv4-compatible ``::a.b.c.d`` always
    counts as internal.
    """
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return is_internal_address(address.ipv4_mapped)
        if address in _NAT64:
            return is_internal_address(IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None and is_internal_address(address.sixtofour):
            return True
        if address in _IPV4_COMPATIBLE or address.is_site_local:
            return True
    return (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or any(address in network for network in _EXTRA_INTERNAL if network.version == address.version)
    )


def is_internal_name(host: str) -> bool:
    """Whether a host name (lower case, no trailing dot) can only name a host of a private network.

    Single-label names (``metadata``, ``redis``) are resolved through the local search domains, so they
    count as internal too.
    """
    if "." not in host:
        return True
    return any(host == suffix or host.endswith("." + suffix) for suffix in INTERNAL_SUFFIXES)


def numeric_host(host: str) -> IPv4Address | None:
    """The IPv4 address a numeric host denotes, in any spelling libc's ``inet_aton`` accepts, or None.

    A host counts as numeric when its last label is a number (decimal or ``0x`` hex), as in browsers:
    ``127.1``, ``0177.0.0.1``, ``0x7f000001`` and ``2130706433`` all denote 127.0.0.1.

    Raises:
        ValueError: The host looks numeric but is no address (``1.2.3.4.5``, ``08.1.1.1``, ``0x``).
    """
    if not _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return None
    try:
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        raise ValueError(f"{host!r} is not an IP address") from None


def parse_resolved(address: str) -> IPAddress:
    """An address as ``getaddrinfo`` returns it (an IPv6 one may carry a ``%zone``)."""
    return ip_address(address.split("%", 1)[0])
