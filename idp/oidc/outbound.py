"""Server-to-server HTTP to relying services' own URLs (back-channel logout, jwks_uri): outside development, https
to public addresses only, checked when a URL is registered and again on the address each connection is made to."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable
from functools import cache
from typing import Protocol
from urllib.parse import urlsplit

import httpcore
import httpx

from idp.settings import Settings

# Names that never leave the local network: RFC 6761 §6.3 (localhost), RFC 6762 §3 (local, mDNS), RFC 8375
# (home.arpa), and "internal", which ICANN reserved for private use in 2024 (cloud metadata services live there).
LOCAL_DOMAINS = ("localhost", "local", "home.arpa", "internal", "localdomain")
# RFC 6052 §2.1: the NAT64 well-known prefix carries an IPv4 address in its last 32 bits; the gateway connects to it.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
LOCAL_ADDRESS_REFUSAL = "must point at a public address, not a loopback, private, link-local or reserved one"
LOCAL_NAME_REFUSAL = "must use a public host name, not a local one such as localhost or a single label"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Resolver(Protocol):
    """Host name → addresses (as text), as DNS answers now; the seam tests fill with fixed answers."""

    def __call__(self, host: str, port: int) -> list[str]: ...


class DestinationRefusedError(httpx.ConnectError):
    """The IdP will not call this URL: not https, or a host that is or resolves to a non-public address. An
    httpx error, so that callers handle it as any request that could not be made."""


def allows_local_destinations(settings: Settings) -> bool:
    """Only development calls relying services on this machine or its network (`make run`, the tests)."""
    return settings.env == "development"


def is_public_address(address: Address) -> bool:
    """Whether `address` is on the public Internet: not loopback, private (RFC 1918, fc00::/7), link-local, shared
    (100.64.0.0/10), unspecified, multicast or reserved, judging an IPv4 address carried in IPv6 by itself."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
        if address.is_site_local:  # fec0::/10, deprecated (RFC 3879) yet still routed inside some sites
            return False
    # is_global follows the IANA special-purpose registries (it excludes 100.64.0.0/10 and every private range);
    # multicast and the reserved ranges count as global there, yet never name a relying service.
    return address.is_global and not address.is_multicast and not address.is_reserved


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d reaches a.b.c.d on a dual-stack socket
        return address.ipv4_mapped
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour  # 2002:aabb:ccdd::/48 (RFC 3056) routes to a.b.c.d; None for every other address


def literal_address(host: str) -> Address | None:
    """The address `host` spells, or None for a name; also the old IPv4 forms resolvers accept (`127.1`,
    `0x7f.1`, `2130706433`), which would otherwise pass as names."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _is_local_name(host: str) -> bool:
    name = host.rstrip(".").lower()
    # A single label goes through the resolver's search domains, onto the IdP's own network.
    return "." not in name or any(name == domain or name.endswith(f".{domain}") for domain in LOCAL_DOMAINS)


def destination_refusal(url: str) -> str | None:
    """Why the IdP will not call `url` outside development, or None: https only, and a host that is neither a
    non-public address nor a local name. What the name resolves to is checked on each connection, not here."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return "must use https"
    host = parts.hostname or ""
    address = literal_address(host)
    if address is not None:
        return None if is_public_address(address) else LOCAL_ADDRESS_REFUSAL
    return LOCAL_NAME_REFUSAL if _is_local_name(host) else None


def resolve_with_system(host: str, port: int) -> list[str]:
    """The system resolver's addresses for `host`, in its order of preference, without repeats."""
    return list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


class _CheckedNetworkBackend(httpcore.SyncBackend):
    """Resolves each host once, checks every address it got, and connects to a checked address (never to the name,
    which a second lookup could answer differently: DNS rebinding). TLS still names the URL's host, for SNI and
    certificate verification, because httpcore takes the server name from the request, not from this socket."""

    def __init__(self, *, allow_local: bool, resolve: Resolver) -> None:
        self._allow_local = allow_local
        self._resolve = resolve

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._addresses(host, port)
        if not self._allow_local and not all(is_public_address(address) for address in addresses):
            raise DestinationRefusedError(f"{host} {LOCAL_ADDRESS_REFUSAL}")
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return super().connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # _addresses never returns an empty list
        raise failure

    def _addresses(self, host: str, port: int) -> list[Address]:
        literal = literal_address(host)
        if literal is not None:
            return [literal]
        try:
            addresses = [ipaddress.ip_address(answer) for answer in self._resolve(host, port)]
        except (OSError, ValueError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        return addresses


class _CheckedTransport(httpx.HTTPTransport):
    def __init__(self, *, allow_local: bool, resolve: Resolver, verify: ssl.SSLContext) -> None:
        super().__init__(verify=verify, trust_env=False)
        self._allow_local = allow_local
        # httpx takes no network backend, so the pool it built is replaced by one with ours (httpx has kept it in
        # `_pool` since 0.18; tests/unit/oidc/test_outbound.py fails at once if that changes).
        self._pool = httpcore.ConnectionPool(
            ssl_context=verify, network_backend=_CheckedNetworkBackend(allow_local=allow_local, resolve=resolve)
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self._allow_local:
            refusal = destination_refusal(str(request.url))
            if refusal is not None:
                raise DestinationRefusedError(f"{request.url.host} {refusal}", request=request)
        return super().handle_request(request)


@cache
def _system_ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~20 ms: once per process, shared by every outbound client (contexts are thread-safe).
    return httpx.create_ssl_context()


def outbound_client(
    *, allow_local: bool, resolve: Resolver = resolve_with_system, verify: ssl.SSLContext | None = None
) -> httpx.Client:
    """An httpx client for relying services' URLs: redirects never followed, no proxy from the environment (it
    would connect instead of us, unchecked), and unless `allow_local`, only https to public addresses.

    Requests it refuses raise DestinationRefusedError before any connection is made.
    """
    transport = _CheckedTransport(allow_local=allow_local, resolve=resolve, verify=verify or _system_ssl_context())
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False)
