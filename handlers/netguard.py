"""SSRF guard for outgoing HTTP: which addresses a tool may connect to, and a resolver that enforces it.

An address is refused unless it is globally routable. The decision does not rest on Python's
``ipaddress`` tables alone (they changed with the CVE-2024-4032 fix, python/cpython#113171, and
older versions call ``192.0.0.8``, ``64:ff9b::7f00:1`` or ``ff02::1`` global): explicit rules come
first, ``is_global`` is only the last word.

- IPv4: explicit rules for 0.0.0.0/8, 10/8, 100.64/10 (CGNAT), 127/8, 169.254/16 (cloud metadata),
  172.16/12, 192.0.0.0/24, the documentation, benchmarking and 6to4-relay ranges, 192.168/16,
  multicast 224/4, reserved 240/4 and the broadcast address; then ``not is_global``.
- IPv6: IPv4-mapped (``::ffff:a.b.c.d``) and NAT64 (``64:ff9b::/96``) addresses are unwrapped and
  the embedded IPv4 address decides; explicit rules for ``::``, ``::1``, fc00::/7, fe80::/10,
  fec0::/10, multicast ff00::/8, 6to4 2002::/16, Teredo, documentation and NAT64 local-use ranges;
  anything outside global unicast 2000::/3 is refused; then ``not is_global``.

URL hosts are parsed the way the C library does (``inet_aton``): ``2130706433``, ``0x7f.1``,
``0177.0.0.1`` and ``127.1`` are all 127.0.0.1. :class:`GuardedResolver` is the aiohttp resolver
that makes the check stick: it resolves a name once, refuses unless **every** address is allowed,
and returns exactly the checked addresses, so the connection goes to an address that was checked
(no second lookup, no DNS rebinding between check and connect).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

__all__ = [
    "ALLOWED_SCHEMES",
    "AddressRefused",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "InvalidTarget",
    "NetPolicy",
    "blocked_reason",
    "embedded_ipv4",
    "parse_ip_literal",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})


class AddressRefused(OSError):
    """The guard refused a host or an address it resolved to.

    An ``OSError`` so that aiohttp treats it as a failed lookup (it arrives chained to a
    ``ClientConnectorDNSError``); no connection has been attempted when it is raised.
    """

    def __init__(self, host: str, address: str | None, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        shown = host if address is None or address == host else f"{host} ({address})"
        super().__init__(f"refused by the SSRF guard: {shown} is {reason}")


class InvalidTarget(ValueError):
    """A URL the guard will not even try: wrong scheme, no host."""


# -- address classification --------------------------------------------------------------------

_V4_RULES: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), label)
    for net, label in (
        ("0.0.0.0/8", "in 0.0.0.0/8 (unspecified, 'this network')"),
        ("10.0.0.0/8", "private (10.0.0.0/8)"),
        ("100.64.0.0/10", "shared address space / CGNAT (100.64.0.0/10)"),
        ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
        ("169.254.0.0/16", "link-local (169.254.0.0/16, cloud metadata endpoints)"),
        ("172.16.0.0/12", "private (172.16.0.0/12)"),
        ("192.0.0.0/24", "IETF protocol assignments (192.0.0.0/24)"),
        ("192.0.2.0/24", "documentation (192.0.2.0/24)"),
        ("192.88.99.0/24", "6to4 relay anycast (192.88.99.0/24)"),
        ("192.168.0.0/16", "private (192.168.0.0/16)"),
        ("198.18.0.0/15", "benchmarking (198.18.0.0/15)"),
        ("198.51.100.0/24", "documentation (198.51.100.0/24)"),
        ("203.0.113.0/24", "documentation (203.0.113.0/24)"),
        ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
        ("255.255.255.255/32", "the broadcast address"),
    )
)

_V6_RULES: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), label)
    for net, label in (
        ("::/128", "unspecified (::)"),
        ("::1/128", "loopback (::1)"),
        ("64:ff9b:1::/48", "NAT64 local-use (64:ff9b:1::/48)"),
        ("100::/64", "discard-only (100::/64)"),
        ("2001::/32", "Teredo (2001::/32)"),
        ("2001:10::/28", "ORCHID (2001:10::/28)"),
        ("2001:db8::/32", "documentation (2001:db8::/32)"),
        ("2002::/16", "6to4 (2002::/16)"),
        ("3fff::/20", "documentation (3fff::/20)"),
        ("fc00::/7", "unique local (fc00::/7)"),
        ("fe80::/10", "link-local (fe80::/10)"),
        ("fec0::/10", "site-local (fec0::/10)"),
        ("ff00::/8", "multicast (ff00::/8)"),
    )
)

_V6_GLOBAL_UNICAST = IPv6Network("2000::/3")
_NAT64 = IPv6Network("64:ff9b::/96")


def _unscoped(addr: IPv6Address) -> IPv6Address:
    return IPv6Address(int(addr)) if addr.scope_id else addr


def embedded_ipv4(addr: IPAddress) -> IPv4Address | None:
    """The IPv4 address an IPv4-mapped (``::ffff:0:0/96``) or NAT64 (``64:ff9b::/96``) address stands for."""
    if isinstance(addr, IPv4Address):
        return None
    addr = _unscoped(addr)
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return IPv4Address(int(addr) & 0xFFFF_FFFF)
    return None


def blocked_reason(addr: IPAddress) -> str | None:
    """Why ``addr`` must not be connected to by default, or None if it is globally routable."""
    if isinstance(addr, IPv6Address):
        addr = _unscoped(addr)
        inner = embedded_ipv4(addr)
        if inner is not None:
            why = blocked_reason(inner)
            kind = "IPv4-mapped" if addr.ipv4_mapped is not None else "NAT64"
            return None if why is None else f"{kind} {inner}, {why}"
        for net6, label in _V6_RULES:
            if addr in net6:
                return label
        if addr not in _V6_GLOBAL_UNICAST:
            return "outside global unicast (2000::/3)"
    else:
        for net4, label in _V4_RULES:
            if addr in net4:
                return label
    if not addr.is_global:
        return "not globally routable"
    return None


# -- URL hosts -----------------------------------------------------------------------------------

_HEX = frozenset("0123456789abcdefABCDEF")
_OCT = frozenset("01234567")
_DEC = frozenset("0123456789")


def _inet_aton_part(part: str) -> int | None:
    if part[:2] in ("0x", "0X"):
        digits, base, allowed = part[2:], 16, _HEX
    elif len(part) > 1 and part[0] == "0":
        digits, base, allowed = part[1:], 8, _OCT
    else:
        digits, base, allowed = part, 10, _DEC
    if not digits or not set(digits) <= allowed:
        return None
    return int(digits, base)


def _parse_ipv4_legacy(host: str) -> IPv4Address | None:
    """``inet_aton``: 1 to 4 parts, each decimal, octal (0...) or hex (0x...); the last fills the rest."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or any(not p for p in parts):
        return None
    values: list[int] = []
    for part in parts:
        value = _inet_aton_part(part)
        if value is None:
            return None
        values.append(value)
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = 0
    for v in head:
        number = (number << 8) | v
    number = (number << (8 * (4 - len(head)))) | last
    return IPv4Address(number)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form the C library accepts, or None for a name.

    ``[::1]``, ``::ffff:127.0.0.1``, ``fe80::1%eth0``, ``127.0.0.1``, ``2130706433``, ``0x7f.1``,
    ``0177.0.0.1``, ``127.1`` are literals; ``example.com`` and ``1.2.3.4.5`` are not.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return IPv6Address(host.replace("%25", "%"))
        except ValueError:
            return None
    if not host.isascii():
        return None
    return _parse_ipv4_legacy(host)


def _is_localhost_name(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")  # RFC 6761: always loopback


@dataclass(frozen=True)
class NetPolicy:
    """What one tool may connect to.

    ``allow_private``: skip the address rules entirely (tests, on-prem targets).
    ``allowed_networks``: exceptions to the rules, e.g. one on-prem subnet.
    """

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(cls, allow_private: bool = False, allowed_networks: Iterable[str] = ()) -> NetPolicy:
        return cls(allow_private, tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks))

    def _exempt(self, addr: IPAddress) -> bool:
        if not self.allowed_networks:
            return False
        candidates: list[IPAddress] = [_unscoped(addr) if isinstance(addr, IPv6Address) else addr]
        inner = embedded_ipv4(addr)
        if inner is not None:
            candidates.append(inner)
        return any(a in net for a in candidates for net in self.allowed_networks if a.version == net.version)

    def refusal(self, addr: IPAddress) -> str | None:
        """Why this policy refuses ``addr``, or None."""
        if self.allow_private:
            return None
        why = blocked_reason(addr)
        if why is None or self._exempt(addr):
            return None
        return why

    def check_address(self, host: str, addr: IPAddress) -> None:
        """Raise :class:`AddressRefused` unless ``addr`` (which ``host`` stands for) is allowed."""
        why = self.refusal(addr)
        if why is not None:
            raise AddressRefused(host, str(addr), why)

    def check_host(self, host: str) -> IPAddress | None:
        """Check what can be decided without DNS: literals and ``localhost`` names.

        Returns the literal address (checked), or None for a name the resolver must look up.
        """
        addr = parse_ip_literal(host)
        if addr is not None:
            self.check_address(host, addr)
            return addr
        if not self.allow_private and _is_localhost_name(host):
            raise AddressRefused(host, None, "a localhost name (loopback)")
        return None

    def check_url(self, url: URL) -> None:
        """Scheme allowlist, then :meth:`check_host` on the host as written and as aiohttp will use it.

        Raises :class:`InvalidTarget` or :class:`AddressRefused`. Names are checked again, with
        their resolved addresses, by :class:`GuardedResolver` when the connection is made.
        """
        if url.scheme not in ALLOWED_SCHEMES:
            raise InvalidTarget(f"scheme {url.scheme or '(none)'!r} is not allowed (http, https only)")
        hosts = {h for h in (url.host, url.raw_host) if h}
        if not hosts:
            raise InvalidTarget("the URL has no host")
        for host in hosts:
            self.check_host(host)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver: resolve once, refuse unless every address is allowed, return the checked addresses.

    ``inner`` does the actual lookup (default: the system resolver in a thread); tests inject
    their own. Literal hosts never reach it.
    """

    def __init__(self, policy: NetPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        literal = self.policy.check_host(host)
        if literal is not None:
            return [
                ResolveResult(
                    hostname=host,
                    host=str(literal),
                    port=port,
                    family=socket.AF_INET6 if literal.version == 6 else socket.AF_INET,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            ]
        results = await self._inner.resolve(host, port, family)
        if not results:
            raise OSError(f"{host} resolved to no address")
        for result in results:
            try:
                addr = ipaddress.ip_address(result["host"])
            except ValueError as exc:
                raise AddressRefused(host, result["host"], "not an IP address") from exc
            self.policy.check_address(host, addr)
        return results

    async def close(self) -> None:
        await self._inner.close()
