"""Which addresses are inside: where a name written for a public service must not lead.

A DNS answer binds a name to whatever address its owner likes. A rule allowing a public
name would, through an answer binding it to an internal address, open a door to the inside
(DNS rebinding; SSRF toward the cloud metadata service). `classify` says what kind of
internal address one is, or PUBLIC: pure, over the address as an integer, with this host's
connected networks given by the caller (nfguard.hostnets reads them).

IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64's well-known
and local-use prefixes, 6to4) are judged by the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from enum import StrEnum
from typing import NamedTuple


class Internal(StrEnum):
    """What kind of address a flow goes to, for [names] private (nfguard.private)."""

    PUBLIC = "public"  # none of the below
    METADATA = "metadata"  # a cloud's instance metadata service
    LOOPBACK = "loopback"  # 127/8, ::1; also 0.0.0.0/8 and ::, which Linux connects here
    LINK_LOCAL = "link_local"  # 169.254/16, fe80::/10, link-scope multicast, broadcast
    PRIVATE = "private"  # RFC 1918, ULA fc00::/7, deprecated site-local fec0::/10
    SHARED = "cgnat"  # 100.64/10, carrier-grade NAT's shared space (RFC 6598)
    MULTICAST = "multicast"  # beyond the link: an organisation's, never a public service's
    CONNECTED = "connected"  # on one of this host's networks (its addresses, on-link routes)


class Private(StrEnum):
    """[names] private: where a name alone may lead (a rule's `private = true`, or a CIDR
    rule naming the address, always may)."""

    ALLOW = "allow"  # inside, but never to NEVER_BY_NAME (a host: internal names are common)
    DENY = "deny"  # nowhere inside (a gateway: its clients' names are the internet's)


PUBLIC = Internal.PUBLIC
PRIVATE_SETTINGS = tuple(Private)
# Kinds a name alone never reaches, whatever [names] private says: the host itself, its
# link, and the metadata service (credentials for the machine's cloud role).
NEVER_BY_NAME = frozenset({Internal.METADATA, Internal.LOOPBACK, Internal.LINK_LOCAL})


class Network(NamedTuple):
    """A network as integers, for a masked compare."""

    version: int
    address: int  # the network address
    mask: int

    def __contains__(self, item: object) -> bool:
        return (isinstance(item, tuple) and len(item) == 2 and item[0] == self.version
                and item[1] & self.mask == self.address)


def network(text: str) -> Network:
    """"10.0.0.0/8" -> Network; host bits are dropped."""
    parsed = ipaddress.ip_network(text, strict=False)
    return Network(parsed.version, int(parsed.network_address), int(parsed.netmask))


def _table(*entries: tuple[Internal, str]) -> tuple[tuple[Network, Internal], ...]:
    return tuple((network(text), kind) for kind, text in entries)


# Tried in order, the first containing network says the kind: single addresses first.
_RANGES = _table(
    (Internal.METADATA, "169.254.169.254/32"),  # AWS, GCP, Azure, OpenStack, Oracle, ...
    (Internal.METADATA, "fd00:ec2::254/128"),  # AWS over IPv6
    (Internal.METADATA, "fd20:ce::254/128"),  # GCP over IPv6
    (Internal.METADATA, "100.100.100.200/32"),  # Alibaba Cloud
    (Internal.METADATA, "168.63.129.16/32"),  # Azure's WireServer (extensions' settings)
    (Internal.LOOPBACK, "127.0.0.0/8"),
    (Internal.LOOPBACK, "0.0.0.0/8"),
    (Internal.LOOPBACK, "::1/128"),
    (Internal.LOOPBACK, "::/128"),
    (Internal.LINK_LOCAL, "169.254.0.0/16"),
    (Internal.LINK_LOCAL, "fe80::/10"),
    (Internal.LINK_LOCAL, "224.0.0.0/24"),  # link-scope multicast (mDNS, routers, ...)
    (Internal.LINK_LOCAL, "255.255.255.255/32"),
    (Internal.LINK_LOCAL, "ff01::/16"),  # interface-local multicast
    (Internal.LINK_LOCAL, "ff02::/16"),  # link-local multicast
    (Internal.PRIVATE, "10.0.0.0/8"),
    (Internal.PRIVATE, "172.16.0.0/12"),
    (Internal.PRIVATE, "192.168.0.0/16"),
    (Internal.PRIVATE, "fc00::/7"),
    (Internal.PRIVATE, "fec0::/10"),
    (Internal.SHARED, "100.64.0.0/10"),
    (Internal.MULTICAST, "224.0.0.0/4"),
    (Internal.MULTICAST, "ff00::/8"),
)

# The same, per family, as plain integers: a flow's check is a few masks and compares.
_BY_FAMILY = {version: tuple((net.address, net.mask, kind) for net, kind in _RANGES
                             if net.version == version) for version in (4, 6)}

# IPv6 prefixes whose addresses carry an IPv4 address, and where (a shift to its bits).
_MAPPED = network("::ffff:0:0/96")  # IPv4-mapped: the kernel sends these as IPv4
_COMPAT = network("::/96")  # IPv4-compatible (deprecated; sit tunnels still take them)
_NAT64 = network("64:ff9b::/96")  # NAT64's well-known prefix (RFC 6052)
_NAT64_LOCAL = network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215), /48 format
_6TO4 = network("2002::/16")  # 6to4: the relay's IPv4 address in bits 16-47
_LOW32 = (1 << 32) - 1
_HIGH96 = _MAPPED.mask


def embedded_v4(address: int) -> int | None:
    """The IPv4 address an IPv6 address carries, if it has that form."""
    high = address & _HIGH96
    if high in (_MAPPED.address, _NAT64.address):
        return address & _LOW32
    if high == _COMPAT.address:
        low = address & _LOW32
        return low if low > 1 else None  # :: and ::1 are themselves
    if (6, address) in _NAT64_LOCAL:
        # RFC 6052 /48: v4 bits 48-63, then the u octet (bits 64-71), then bits 72-87.
        high = (address >> 64) & 0xFFFF
        low = (address >> 40) & 0xFFFF
        return (high << 16) | low
    if (6, address) in _6TO4:
        return (address >> 80) & _LOW32
    return None


Connected = Iterable[Network]


def classify(version: int, address: int, connected: Connected = ()) -> Internal:
    """The kind of internal address this is, or PUBLIC. The fixed ranges come first (a
    link-local address of one of the host's networks is link-local), then `connected`."""
    if version == 6:
        carried = embedded_v4(address)
        if carried is not None:
            version, address = 4, carried
    for net, mask, kind in _BY_FAMILY[version]:
        if address & mask == net:
            return kind
    for near in connected:
        if near.version == version and address & near.mask == near.address:
            return Internal.CONNECTED
    return PUBLIC


def address_of(ip: str) -> tuple[int, int]:
    """(version, address) of an address in text, as socket.inet_ntop writes them (DNS
    answers, packets): inet_pton is many times faster than the ipaddress module."""
    if ":" in ip:
        return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
    return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")


def classify_text(ip: str, connected: Connected = ()) -> Internal:
    """`classify` of an address in text (as DNS answers and packets give them)."""
    return classify(*address_of(ip), connected)
