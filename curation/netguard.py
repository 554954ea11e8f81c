"""The private-address guard: URLs come from untrusted APIs, so every connection is checked.

A host is resolved once (with an injectable resolver, so tests never need real DNS), every
address it resolves to is checked, and the connection is then made to the checked address.
Loopback, private, link-local (cloud metadata), shared, multicast and reserved addresses are
refused unless allowed by ``crawl.allow_private_hosts`` (``true``, or a list of networks).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddress(Exception):
    """A host that resolves to an address the guard refuses."""


class ResolutionFailed(Exception):
    """A host name that does not resolve."""


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the operating system (A and AAAA records)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolutionFailed(f"{host}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: IPAddress) -> bool:
    """True for globally routable unicast addresses (IPv4-mapped IPv6 judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class AddressGuard:
    """Resolves hosts and refuses non-public addresses, except networks explicitly allowed."""

    def __init__(self, allow_private: bool | Iterable[str] = False, resolver: Resolver | None = None) -> None:
        self.allow_all = allow_private is True
        if isinstance(allow_private, str):
            allow_private = [allow_private]
        networks = [] if isinstance(allow_private, bool) else list(allow_private)
        try:
            self.allowed: list[IPNetwork] = [ipaddress.ip_network(n, strict=False) for n in networks]
        except ValueError as exc:
            raise ValueError(f"crawl.allow_private_hosts: {exc}") from None
        self.resolver = resolver or system_resolver

    def check(self, ip: str) -> None:
        """Raise :class:`BlockedAddress` unless ``ip`` may be connected to."""
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            raise BlockedAddress(f"{ip} is not an IP address") from None
        if self.allow_all or is_public(address):
            return
        if any(address in network for network in self.allowed if network.version == address.version):
            return
        raise BlockedAddress(f"{ip} is a private, loopback, link-local or reserved address")

    def resolve(self, host: str, port: int) -> list[str]:
        """Every address of ``host``, each checked; raises if any of them is refused."""
        host = host.strip("[]")
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = self.resolver(host, port)
        if not addresses:
            raise ResolutionFailed(f"{host}: no addresses")
        for ip in addresses:
            self.check(ip)
        return addresses
