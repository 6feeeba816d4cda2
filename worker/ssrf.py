"""Which callback URLs gmiq may call: scheme, and the addresses a host resolves to.

Every resolved address is checked (a name that resolves to one public and one private address
is refused), and the caller connects to the checked address, so a DNS answer that changes
between the check and the connection cannot point the request inward.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IPAddress]]

# Cloud metadata services; most are link-local or private anyway, named for a clear reason.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
# NAT64 embeds an IPv4 address in IPv6; check the embedded one.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class CallbackRefusedError(ValueError):
    """The URL may never be called (scheme, or a forbidden address): do not retry."""


class UnresolvableHostError(CallbackRefusedError):
    """The host did not resolve now; it may later."""


@dataclass(frozen=True)
class Target:
    """Where to connect for a URL: its host and port and, when checked, the address to use."""

    scheme: str
    host: str
    port: int
    address: IPAddress | None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why gmiq must not call this address, or None if it is a public unicast address."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return forbidden_reason(embedded)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for flag, kind in (
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_unspecified, "unspecified"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
    ):
        if flag:
            return f"a {kind} address"
    # Shared (CGNAT) space and other special ranges are not private yet not global either.
    return None if address.is_global else "a non-public address"


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address the host resolves to (a literal address resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHostError(f"host {host!r} does not resolve") from exc
    # Scope ids (fe80::1%eth0) are not part of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_callback_url(
    url: str, allow_http: bool, allow_private: bool, resolve: Resolver = resolve_host
) -> Target:
    """The target to connect to, or CallbackRefusedError saying why the URL is refused."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or (scheme == "http" and not allow_http):
        allowed = "https or http" if allow_http else "https"
        raise CallbackRefusedError(f"must be an {allowed} URL")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise CallbackRefusedError("has an invalid port") from exc
    if not host:
        raise CallbackRefusedError("has no host")
    port = port or (443 if scheme == "https" else 80)
    if allow_private:
        return Target(scheme, host, port, None)
    addresses = resolve(host, port)
    if not addresses:
        raise UnresolvableHostError(f"host {host!r} does not resolve")
    for address in addresses:
        reason = forbidden_reason(address)
        if reason is not None:
            raise CallbackRefusedError(f"host {host!r} resolves to {address}, {reason}")
    return Target(scheme, host, port, addresses[0])
