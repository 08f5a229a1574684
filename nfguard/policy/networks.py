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
from collections import defaultdict
from collections.abc import Iterator
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


class PrefixIndex:
    """Networks of one address family, each with the positions (rules, clients) that name
    it: a hash table per prefix length, so "which networks hold this address" costs one
    probe per length in use (at most 33 for IPv4, 129 for IPv6), however many networks
    there are."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, list[int]]] = defaultdict(dict)
        self.masks: list[tuple[int, dict[int, list[int]]]] = []

    def add(self, network_int: int, prefix: int, position: int) -> None:
        table = self.tables[prefix]
        positions = table.get(network_int)
        if positions is None:
            table[network_int] = [position]
        else:
            positions.append(position)

    def freeze(self) -> None:
        """Ready for lookups, once every network is added."""
        full = (1 << self.bits) - 1
        self.masks = [
            (full ^ ((1 << (self.bits - prefix)) - 1), table)
            for prefix, table in sorted(self.tables.items())
        ]

    def lookup(self, address: int) -> Iterator[list[int]]:
        """The positions of each network holding `address`, shortest prefix first."""
        for mask, table in self.masks:
            positions = table.get(address & mask)
            if positions:
                yield positions
