"""The CIDRs of policy rules: parsed exactly as `ipaddress.ip_network(text, strict=True)`
parses them, kept as the three integers the indexes and checks use.

A policy of 100k rules is parsed on every start and reload, and `ipaddress` spends most of
that time (and memory) on objects that are only ever asked for their integers. Addresses in
the form the C library itself writes (`inet_ntop`: dotted decimal without leading zeros, RFC
5952 IPv6) are parsed by the C library; every other text, valid or not, goes to `ipaddress`,
so what is accepted, and every error message, is `ipaddress`'s own.
"""

from __future__ import annotations

import ipaddress
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import NamedTuple


class Network(NamedTuple):
    version: int  # 4 | 6
    address: int  # the network address
    prefixlen: int

    def __str__(self) -> str:
        kind = ipaddress.IPv4Network if self.version == 4 else ipaddress.IPv6Network
        return str(kind((self.address, self.prefixlen)))

    def contains(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if address.version != self.version:
            return False
        host_bits = (32 if self.version == 4 else 128) - self.prefixlen
        return int(address) >> host_bits == self.address >> host_bits


def parse_network(text: str) -> Network:
    """A CIDR or a single address; raises ValueError with `ipaddress`'s message."""
    address, slash, prefix = text.partition("/")
    family, bits, version = (AF_INET6, 128, 6) if ":" in address else (AF_INET, 32, 4)
    try:
        packed = inet_pton(family, address)
    except (OSError, ValueError):  # not an address, or not text inet_pton takes
        packed = b""
    if packed and inet_ntop(family, packed) == address:
        if not slash:
            length = bits
        elif prefix.isascii() and prefix.isdigit():
            length = int(prefix)
        else:
            length = bits + 1  # not a prefix length: ipaddress says what it is
        value = int.from_bytes(packed, "big")
        if length <= bits and not value & ((1 << (bits - length)) - 1):
            return Network(version, value, length)  # else "host bits set" and others, below
    network = ipaddress.ip_network(text, strict=True)
    return Network(network.version, int(network.network_address), network.prefixlen)
