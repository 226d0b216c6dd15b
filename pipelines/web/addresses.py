"""Which addresses the crawler may connect to: public unicast only, checked after DNS resolution."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOWED_SCHEMES = ("http", "https")


class BlockedAddress(Exception):
    """A URL whose host resolves to an address the crawler must not reach."""

    reason = "blocked_address"


def is_public(address: IPAddress) -> bool:
    """True for global unicast addresses; loopback, private, link-local, multicast, reserved are not."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


@dataclass
class AddressPolicy:
    """Resolve a host and return only the addresses it is safe to connect to."""

    allow_private: bool = False
    allowed_networks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in self.allowed_networks]

    def permits(self, address: IPAddress) -> bool:
        if self.allow_private or is_public(address):
            return True
        return any(address in network for network in self._networks)

    def vetted_addresses(self, host: str, port: int) -> list[tuple[int, str]]:
        """(family, ip) pairs to connect to; raises BlockedAddress if none is allowed or DNS fails."""
        infos = _resolve(host, port)
        allowed: list[tuple[int, str]] = []
        refused: list[str] = []
        for family, ip in infos:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
            if self.permits(address):
                allowed.append((family, ip))
            else:
                refused.append(ip)
        if refused:
            # one bad answer is enough: a host mixing public and private answers is a rebinding trick
            raise BlockedAddress(
                f"{host} resolves to a non-public address ({', '.join(sorted(set(refused)))})"
            )
        if not allowed:
            raise BlockedAddress(f"{host} has no address")
        return allowed


def _resolve(host: str, port: int) -> list[tuple[int, str]]:
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        return [(family, str(literal))]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise DNSFailure(f"cannot resolve {host}: {error}") from error
    return _unique((info[0], info[4][0]) for info in infos)


def _unique(pairs: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    for pair in pairs:
        if pair not in seen:
            seen.append(pair)
    return seen


class DNSFailure(Exception):
    reason = "dns_failure"
