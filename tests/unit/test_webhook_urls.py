"""Which webhook URLs are accepted, what they resolve to and how logs show them (no Redis, no network)."""

from __future__ import annotations

import base64
from ipaddress import ip_address

import pytest

from service.core.errors import InvalidRequest
from service.core.webhook_addresses import is_internal_address, is_internal_name, numeric_host
from service.core.webhook_urls import (
    Target,
    parse_target,
    redact_url,
    resolve_target,
    scrub,
    system_resolver,
    validate_webhook_url,
)


def refused(url: str, **options: bool) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validate_webhook_url(url, **options)
    assert (caught.value.code, caught.value.param) == ("invalid_webhook_url", "webhook_url")
    return caught.value


# -- form ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "example.com/hook",
        "http://",
        "http:///hook",
        "https://:443/hook",
        "http://example.com:99999/hook",
        "http://example.com:0/hook",
        "http://example.com/a hook",
        "http://example.com/\x7f",
        "https://example.com/" + "a" * 2048,
        "http://[::1",
        "http://[v1.abc]/hook",
        "http://[fe80::1%25eth0]/hook",
        "http://exämple.com/hook",
        "http://ex%41mple.com/hook",
        "http://foo..example.com/hook",
        "http://a@b@example.com/hook",
        "http://evil.example\\@example.com/hook",
        "http://1.2.3.4.5/hook",
        "http://08.1.1.1/hook",
        "http://example.0x/hook",
        "http://example.123/hook",
    ],
)
def test_malformed_urls_are_refused_even_when_private_is_allowed(url: str) -> None:
    refused(url, allow_private=True)


@pytest.mark.parametrize(
    ("url", "means"),
    [
        ("http://0x7f000001/hook", "127.0.0.1"),
        ("http://2130706433/hook", "127.0.0.1"),
        ("http://0177.0.0.1/hook", "127.0.0.1"),
        ("http://127.1/hook", "127.0.0.1"),
        ("http://0x7f.1/hook", "127.0.0.1"),
        ("http://127.0.0.1./hook", "127.0.0.1"),
        ("http://0xa9fea9fe/latest/meta-data", "169.254.169.254"),
        ("http://0x08080808/hook", "8.8.8.8"),
    ],
)
def test_other_spellings_of_ipv4_addresses_are_refused_naming_the_address(url: str, means: str) -> None:
    assert means in refused(url, allow_private=True).message
    assert means in refused(url).message


@pytest.mark.parametrize(
    ("host", "address"),
    [("0x7f000001", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
     ("127.1", "127.0.0.1"), ("10.1", "10.0.0.1"), ("8.8.8.8", "8.8.8.8"), ("example.com", None),
     ("1e100.net", None)],
)  # fmt: skip
def test_numeric_hosts_denote_what_inet_aton_reads(host: str, address: str | None) -> None:
    assert numeric_host(host) == (ip_address(address) if address else None)


# -- internal targets ----------------------------------------------------------------------------

INTERNAL_URLS = [
    "http://127.0.0.1/hook",
    "http://127.255.255.254:8080/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://[::127.0.0.1]/hook",
    "http://[::8.8.8.8]/hook",
    "http://[64:ff9b::127.0.0.1]/hook",
    "http://[64:ff9b::a00:1]/hook",
    "http://[2002:7f00:1::1]/hook",
    "http://[2002:a9fe:a9fe::]/hook",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",
    "http://0.0.0.0/hook",
    "http://[::]/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:169.254.169.254]/latest/meta-data",
    "http://[fd00:ec2::254]/latest/meta-data",
    "http://100.100.100.200/latest/meta-data",
    "http://192.0.0.192/opc/v1",
    "http://10.0.0.1/hook",
    "http://172.16.0.1/hook",
    "http://172.31.255.255/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",
    "http://100.127.255.254/hook",
    "http://198.18.0.1/hook",
    "http://[fc00::1]/hook",
    "http://[fdff:ffff::1]/hook",
    "http://[fe80::1]/hook",
    "http://[febf::1]/hook",
    "http://[fec0::1]/hook",
    "http://224.0.0.1/hook",
    "http://239.255.255.250/hook",
    "http://[ff02::1]/hook",
    "http://[ff0e::1]/hook",
    "http://240.0.0.1/hook",
    "http://255.255.255.255/hook",
    "http://192.0.2.1/hook",
    "http://[2001:db8::1]/hook",
    "http://localhost/hook",
    "http://LOCALHOST:8000/hook",
    "http://localhost./hook",
    "http://api.localhost/hook",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",
    "http://instance-data/latest/",
    "http://redis:6379/",
    "http://printer.local/hook",
    "http://db.corp.internal/hook",
    "http://router.home.arpa/hook",
    "http://nas.lan/hook",
    "https://user:pass@127.0.0.1/hook",
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_internal_targets_are_refused(url: str) -> None:
    error = refused(url)
    assert "public" in error.message
    assert "pass" not in error.message


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/hook", "http://[::1]/hook", "http://localhost:8000/hook", "http://10.0.0.1/hook",
     "http://metadata.google.internal/", "http://[::ffff:127.0.0.1]/hook", "http://redis/hook"],
)  # fmt: skip
def test_internal_targets_pass_when_private_is_allowed(url: str) -> None:
    assert validate_webhook_url(url, allow_private=True) == url


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook?x=1",
        "HTTPS://EXAMPLE.COM",
        "https://example.com./hook",
        "https://hooks.example.com:8443/a/b?token=1",
        "https://user:p%40ss@example.com/hook",
        "https://xn--bcher-kva.example/hook",
        "https://1e100.net/hook",
        "http://8.8.8.8/hook",
        "https://[2606:4700:4700::1111]/hook",
        "http://[::ffff:8.8.8.8]/hook",
        "http://[64:ff9b::808:808]/hook",
        "http://[2002:808:808::1]/hook",
    ],
)
def test_public_targets_pass_unchanged(url: str) -> None:
    assert validate_webhook_url(url) == url


@pytest.mark.parametrize(
    ("address", "internal"),
    [("8.8.8.8", False), ("1.1.1.1", False), ("2606:4700::1", False), ("::ffff:8.8.8.8", False),
     ("127.0.0.1", True), ("::ffff:10.0.0.1", True), ("64:ff9b::c0a8:1", True), ("2002:c0a8:101::", True),
     ("::", True), ("::1", True), ("100.64.0.1", True), ("192.0.0.192", True), ("224.0.0.251", True),
     ("ff05::2", True), ("5f00::1", True)],
)  # fmt: skip
def test_internal_addresses(address: str, internal: bool) -> None:
    assert is_internal_address(ip_address(address)) is internal


def test_internal_names() -> None:
    assert all(is_internal_name(name) for name in ["localhost", "a.localhost", "metadata", "x.internal"])
    assert not any(is_internal_name(name) for name in ["example.com", "localhost.example.com", "internal.io"])


# -- after DNS -----------------------------------------------------------------------------------


def fixed(*addresses: str):  # type: ignore[no-untyped-def]
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return list(addresses)

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def test_a_name_is_resolved_once_and_its_checked_addresses_returned() -> None:
    resolver = fixed("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "93.184.215.14")
    target = parse_target("https://hooks.example.com:8443/x")

    addresses = resolve_target(target, resolver=resolver)

    assert addresses == [ip_address("93.184.215.14"), ip_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c")]
    assert resolver.calls == [("hooks.example.com", 8443)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("internal", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fe80::1%eth0"])
def test_a_name_with_any_internal_address_is_refused(internal: str) -> None:
    target = parse_target("https://rebind.example.com/hook")
    with pytest.raises(InvalidRequest) as caught:
        resolve_target(target, resolver=fixed("93.184.215.14", internal))
    assert "internal address" in caught.value.message
    assert resolve_target(target, allow_private=True, resolver=fixed(internal))


def test_a_name_the_real_resolver_maps_to_loopback_is_refused() -> None:
    # getaddrinfo itself answers (from /etc/hosts), for a name that passes the checks made without DNS.
    target = parse_target("https://hooks.example.com/hook")
    with pytest.raises(InvalidRequest, match="internal address"):
        resolve_target(target, resolver=lambda host, port: system_resolver("localhost", port))


def test_ip_literals_are_not_looked_up_and_internal_names_not_even_resolved() -> None:
    resolver = fixed("8.8.8.8")
    assert resolve_target(parse_target("http://8.8.4.4/"), resolver=resolver) == [ip_address("8.8.4.4")]
    with pytest.raises(InvalidRequest):
        resolve_target(parse_target("http://metadata.google.internal/"), resolver=resolver)
    assert resolver.calls == []  # type: ignore[attr-defined]


def test_a_resolver_answer_that_is_no_address_or_nothing_is_refused() -> None:
    target = parse_target("https://hooks.example.com/hook")
    with pytest.raises(InvalidRequest, match="no address"):
        resolve_target(target, resolver=fixed("not-an-address"))
    with pytest.raises(OSError, match="no address"):
        resolve_target(target, resolver=fixed())


# -- the parsed target ---------------------------------------------------------------------------


def test_a_target_keeps_what_the_request_needs() -> None:
    target = parse_target("HTTPS://Us%40r:p%3Ass@Hooks.Example.COM.:8443/a%20b/ü?q=1%202&r=''#frag")

    assert (target.scheme, target.host, target.port, target.address) == (
        "https",
        "hooks.example.com",
        8443,
        None,
    )
    assert target.target == "/a%20b/%C3%BC?q=1%202&r=''"
    assert target.host_header == "hooks.example.com:8443"
    assert target.authorization == "Basic " + base64.b64encode(b"Us@r:p:ss").decode()
    ipv6 = parse_target("http://[2606:4700::1]/")
    assert (ipv6.host_header, ipv6.port, ipv6.target, ipv6.authorization) == ("[2606:4700::1]", 80, "/", None)
    assert isinstance(ipv6, Target)


# -- redaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:hunter22@hooks.example.com/a?token=s3cret", "https://***@hooks.example.com/a?***"),
        ("https://hooks.example.com:8443/a/b", "https://hooks.example.com:8443/a/b"),
        ("http://:hunter22@[::1]:80/", "http://***@[::1]:80/"),
        ("http:user:hunter22@example.com/x", "http:///***"),
        ("http://[::1/user:hunter22", "<unparseable URL>"),
    ],
)
def test_urls_are_redacted_for_logs(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_errors_are_scrubbed_of_credentials_and_query() -> None:
    url = "https://user:hunter%2322@hooks.example.com/a?token=s3cret"
    text = "failed for user:hunter%2322 (hunter#22) with token=s3cret"
    assert scrub(text, url) == "failed for *** (***) with ***"
    assert scrub("nothing to hide", "http://[::1") == "nothing to hide"
