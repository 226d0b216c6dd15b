"""Which addresses the crawler may connect to: public unicast only, checked after DNS resolution.

IPv6 forms that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64
``64:ff9b::/96``) are unwrapped to that IPv4 first: a NAT64 or 6to4 gateway would deliver the packet
there, so ``64:ff9b::7f00:1`` is loopback.

The one exemption is an exact **origin** (scheme, host as written, port): allowing
``http://127.0.0.1:8080`` (a test server, an internal mirror) allows that server only, not
``http://localhost:8080``, ``http://127.1:8080``, ``http://2130706433:8080``, another port or
``https``. The host is compared as written in the URL (case and IPv6 spelling aside), before any
resolution, so no other name or numeric spelling of the same address matches it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(Exception):
    """A URL whose host resolves to an address the crawler must not reach."""

    reason = "blocked_address"


class DNSFailure(Exception):
    reason = "dns_failure"


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), or None."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in SIX_TO_FOUR:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True for global unicast addresses; loopback, private, link-local, multicast, reserved are not."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public(inner)
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def canonical_host(host: str) -> str:
    """A host as compared for origins: lower case, no IPv6 brackets, IPv6 literals in compressed form.

    Nothing else is normalised: ``127.1``, ``0x7f000001`` or a trailing dot stay what they are.
    """
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return host
    return host


@dataclass(frozen=True)
class Origin:
    """scheme://host:port, the unit a server is allowed by."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Origin:
        """``http://127.0.0.1:8080`` (a default port may be left out); anything more is refused."""
        try:
            parts = urlsplit(text.strip())
            port = parts.port
        except ValueError as error:
            raise ValueError(f"not an origin: {text!r} ({error})") from error
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise ValueError(f"an origin is http:// or https://, got {text!r}")
        if not parts.hostname:
            raise ValueError(f"an origin names a host: {text!r}")
        if parts.username or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"an origin is scheme://host:port only, without user, path or query: {text!r}")
        return cls(scheme, canonical_host(parts.hostname), port or DEFAULT_PORTS[scheme])

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass
class AddressPolicy:
    """Resolve a host and return only the addresses it is safe to connect to.

    ``allowed_origins`` are exempt from the public-address rule, exactly; ``allow_private`` turns the
    rule off altogether (never needed to reach one test server: allow its origin).
    """

    allow_private: bool = False
    allowed_origins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._origins = frozenset(Origin.parse(o) for o in self.allowed_origins)

    def exempt(self, scheme: str | None, host: str, port: int) -> bool:
        """Is (scheme, host, port) one of the allowed origins? ``scheme`` None: never."""
        if scheme is None or not self._origins:
            return False
        return Origin(scheme.lower(), canonical_host(host), int(port)) in self._origins

    def permits(self, address: IPAddress) -> bool:
        return self.allow_private or is_public(address)

    def vetted_addresses(self, host: str, port: int, scheme: str | None = None) -> list[tuple[int, str]]:
        """(family, ip) pairs to connect to; raises BlockedAddress if none is allowed or DNS fails."""
        infos = _resolve(host, port)
        if not infos:
            raise BlockedAddress(f"{host} has no address")
        if self.exempt(scheme, host, port):
            return infos
        refused = [ip for _, ip in infos if not self.permits(ipaddress.ip_address(ip.split("%", 1)[0]))]
        if refused:
            # one bad answer is enough: a host mixing public and private answers is a rebinding trick
            raise BlockedAddress(
                f"{host} resolves to a non-public address ({', '.join(sorted(set(refused)))})"
            )
        return infos


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
    except (socket.gaierror, UnicodeError) as error:
        raise DNSFailure(f"cannot resolve {host}: {error}") from error
    return _unique((info[0], info[4][0]) for info in infos)


def _unique(pairs: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    for pair in pairs:
        if pair not in seen:
            seen.append(pair)
    return seen
