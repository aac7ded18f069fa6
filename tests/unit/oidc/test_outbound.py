"""Outbound HTTP to relying services' URLs: which addresses and URLs are refused outside development, and the
check on the address actually connected to (a fake resolver stands in for DNS; servers on 127.0.0.1 count
connections)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from authlib.oauth2.rfc6749.errors import InvalidClientError
from joserfc.jwk import ECKey
from local_server import Answer, LocalServer, certificates_for

from idp.models import Client
from idp.oidc.logout import post_logout_token
from idp.oidc.outbound import (
    DestinationRefusedError,
    allows_local_destinations,
    destination_refusal,
    is_public_address,
    outbound_client,
)
from idp.oidc.server import OAuthClient, PrivateKeyJwt
from idp.settings import Settings

RELYING_HOST = "rp.example.kr"
ISSUER = "https://login.gg.go.kr"


@dataclass
class FakeResolver:
    """DNS as the test says it is: host → addresses, every question recorded."""

    answers: dict[str, list[str]]
    asked: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.answers:
            raise OSError(f"no such host {host}")
        return self.answers[host]


@pytest.fixture
def server() -> Iterator[LocalServer]:
    server = LocalServer()
    yield server
    server.close()


# -- which addresses are public ------------------------------------------------------------------------------------

NOT_PUBLIC = [
    "127.0.0.1",  # loopback
    "127.255.255.254",
    "10.0.0.1",  # RFC 1918
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.10",
    "169.254.169.254",  # link-local: cloud metadata services
    "100.64.0.1",  # RFC 6598 carrier-grade NAT
    "100.127.255.254",
    "0.0.0.0",  # noqa: S104  unspecified
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "198.18.0.1",  # benchmarking
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fe80::1",
    "fe80::1%lo",
    "fc00::1",  # unique local (fc00::/7)
    "fd12:3456::1",
    "fec0::1",  # deprecated site-local
    "ff02::1",  # multicast
    "ff0e::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1",
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:7f00:1::1",
    "2001:db8::1",  # documentation
    "2001::1",  # Teredo
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "211.234.100.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_loopback_private_and_special_addresses_are_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_global_unicast_addresses_are_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


# -- which URLs are refused when registered ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://rp.example.kr/bc", "must use https"),
        ("http://127.0.0.1:8080/bc", "must use https"),
        ("https://127.0.0.1/bc", "public address"),
        ("https://10.1.2.3/bc", "public address"),
        ("https://169.254.169.254/latest/meta-data", "public address"),
        ("https://100.64.0.1/bc", "public address"),
        ("https://0.0.0.0/bc", "public address"),
        ("https://[::1]/bc", "public address"),
        ("https://[fd00::1]/bc", "public address"),
        ("https://[::ffff:127.0.0.1]/bc", "public address"),
        ("https://[::ffff:7f00:1]/bc", "public address"),
        ("https://2130706433/bc", "public address"),  # 127.0.0.1 as one number
        ("https://0x7f.1/bc", "public address"),  # 127.0.0.1 in hex, short form
        ("https://127.1/bc", "public address"),
        ("https://localhost/bc", "public host name"),
        ("https://localhost./bc", "public host name"),
        ("https://api.localhost/bc", "public host name"),
        ("https://printer.local/bc", "public host name"),
        ("https://metadata.google.internal/computeMetadata", "public host name"),
        ("https://router.home.arpa/bc", "public host name"),
        ("https://intranet/bc", "public host name"),
    ],
)
def test_urls_the_idp_would_call_on_its_own_network_are_refused(url: str, reason: str) -> None:
    refusal = destination_refusal(url)
    assert refusal is not None
    assert reason in refusal


@pytest.mark.parametrize(
    "url",
    [
        "https://rp.example.kr/oidc/backchannel-logout",
        "https://minwon.suwon.go.kr:8443/jwks.json",
        "https://8.8.8.8/bc",
        "https://[2606:4700::1111]/bc",
        "https://xn--9n2bp8qc1g.kr/bc",  # an IDN, as the URL carries it
    ],
)
def test_https_urls_on_public_hosts_are_accepted(url: str) -> None:
    assert destination_refusal(url) is None


def test_only_development_allows_local_destinations(tmp_path: Path) -> None:
    assert allows_local_destinations(Settings(instance_dir=tmp_path))
    assert not allows_local_destinations(Settings(instance_dir=tmp_path, env="production"))


# -- the check at connection time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.1"], ["::ffff:127.0.0.1"], ["10.0.0.7"], ["169.254.169.254"], ["8.8.8.8", "127.0.0.1"]],
    ids=["loopback", "mapped-loopback", "private", "metadata", "public-then-loopback"],
)
def test_a_name_resolving_to_a_non_public_address_is_refused_without_connecting(
    server: LocalServer, answer: list[str]
) -> None:
    # The name passed registration; its DNS answer changed since (rebinding), or always was private.
    resolver = FakeResolver({RELYING_HOST: answer})
    with (
        outbound_client(allow_local=False, resolve=resolver) as http,
        pytest.raises(DestinationRefusedError) as refused,
    ):
        http.post(f"https://{RELYING_HOST}:{server.port}/bc", data={"logout_token": "t"}, timeout=1)
    assert isinstance(refused.value, httpx.HTTPError)  # callers handle it as any failed request
    assert resolver.asked == [(RELYING_HOST, server.port)]
    assert server.connections == 0


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1:{port}/bc", "https://[::ffff:127.0.0.1]:{port}/bc", "https://2130706433:{port}/bc"],
    ids=["dotted", "mapped", "one-number"],
)
def test_a_literal_loopback_address_is_refused_without_asking_the_resolver(server: LocalServer, url: str) -> None:
    resolver = FakeResolver({})
    with outbound_client(allow_local=False, resolve=resolver) as http, pytest.raises(DestinationRefusedError):
        http.get(url.format(port=server.port), timeout=1)
    assert resolver.asked == []
    assert server.connections == 0


def test_plain_http_is_refused_outside_development_before_resolving(server: LocalServer) -> None:
    resolver = FakeResolver({RELYING_HOST: ["127.0.0.1"]})
    with (
        outbound_client(allow_local=False, resolve=resolver) as http,
        pytest.raises(DestinationRefusedError, match="https"),
    ):
        http.get(f"http://{RELYING_HOST}:{server.port}/jwks", timeout=1)
    assert resolver.asked == []
    assert server.connections == 0


def test_the_connection_goes_to_the_address_resolved_once_and_names_the_host(server: LocalServer) -> None:
    # `.invalid` never resolves in real DNS (RFC 6761 §6.4): the request can only arrive through the checked answer.
    resolver = FakeResolver({"relying.invalid": ["127.0.0.1"]})
    with outbound_client(allow_local=True, resolve=resolver) as http:
        response = http.post(f"http://relying.invalid:{server.port}/bc", data={"logout_token": "t"}, timeout=5)
    assert response.status_code == 200
    assert resolver.asked == [("relying.invalid", server.port)]
    assert server.connections == 1
    assert [(seen.method, seen.path, seen.host) for seen in server.requests] == [
        ("POST", "/bc", f"relying.invalid:{server.port}")
    ]


def test_an_unresolvable_name_is_a_connect_error() -> None:
    with (
        outbound_client(allow_local=False, resolve=FakeResolver({})) as http,
        pytest.raises(httpx.ConnectError) as failed,
    ):
        http.get("https://gone.example.kr/jwks", timeout=1)
    assert not isinstance(failed.value, DestinationRefusedError)


def test_https_is_verified_against_the_url_host_while_connecting_to_the_checked_address(tmp_path: Path) -> None:
    certificates = certificates_for(RELYING_HOST, tmp_path)
    server = LocalServer(lambda path: Answer(body=b'{"keys": []}'), tls=certificates.server)
    try:
        resolver = FakeResolver({RELYING_HOST: ["127.0.0.1"], "impostor.example.kr": ["127.0.0.1"]})
        with outbound_client(allow_local=True, resolve=resolver, verify=certificates.client) as http:
            response = http.get(f"https://{RELYING_HOST}:{server.port}/jwks", timeout=5)
            assert response.status_code == 200
            assert server.server_names == [RELYING_HOST]  # SNI names the host, not 127.0.0.1
            assert server.requests[0].host == f"{RELYING_HOST}:{server.port}"
            # Same address, another name: the certificate (for rp.example.kr) does not match and nothing is sent.
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                http.get(f"https://impostor.example.kr:{server.port}/jwks", timeout=5)
        assert len(server.requests) == 1
    finally:
        server.close()


def test_redirects_are_not_followed() -> None:
    server = LocalServer(lambda path: Answer(307, headers={"Location": "http://127.0.0.1:1/elsewhere"}))
    try:
        with outbound_client(allow_local=True) as http:
            response = http.get(f"http://127.0.0.1:{server.port}/jwks", timeout=5)
        assert response.status_code == 307
        assert len(server.requests) == 1
    finally:
        server.close()


# -- the two callers -----------------------------------------------------------------------------------------------


def test_back_channel_logout_delivery_to_a_private_address_is_refused_without_connecting(server: LocalServer) -> None:
    resolver = FakeResolver({RELYING_HOST: ["127.0.0.1"]})
    with outbound_client(allow_local=False, resolve=resolver) as http, pytest.raises(httpx.HTTPError):
        post_logout_token(f"https://{RELYING_HOST}:{server.port}/bc", "logout.token.value", http=http)
    assert server.connections == 0


def test_back_channel_logout_delivery_posts_the_token(server: LocalServer) -> None:
    with outbound_client(allow_local=True) as http:
        status = post_logout_token(f"http://127.0.0.1:{server.port}/bc", "logout.token.value", http=http)
    assert status == 200
    assert server.requests[0].body == b"logout_token=logout.token.value"


def test_private_key_jwt_keys_from_a_private_address_are_refused_without_connecting(server: LocalServer) -> None:
    resolver = FakeResolver({RELYING_HOST: ["127.0.0.1"]})
    client = Client(id="rp-1", jwks_uri=f"https://{RELYING_HOST}:{server.port}/jwks.json")
    with outbound_client(allow_local=False, resolve=resolver) as http, pytest.raises(InvalidClientError):
        PrivateKeyJwt(ISSUER, http=http).resolve_client_public_key(OAuthClient(client, b"k"))
    assert server.connections == 0


def test_private_key_jwt_keys_are_fetched_from_the_jwks_uri() -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "rp-2026"})
    body = json.dumps({"keys": [key.as_dict(private=False)]}).encode()
    server = LocalServer(lambda path: Answer(body=body, headers={"Content-Type": "application/json"}))
    try:
        client = Client(id="rp-1", jwks_uri=f"http://127.0.0.1:{server.port}/jwks.json")
        with outbound_client(allow_local=True) as http:
            keys = PrivateKeyJwt(ISSUER, http=http).resolve_client_public_key(OAuthClient(client, b"k"))
        assert [k.kid for k in keys.keys] == ["rp-2026"]
    finally:
        server.close()
