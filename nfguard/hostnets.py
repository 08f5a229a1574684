"""This host's connected networks, read from the kernel: for [names] private, an address on
one of them is inside (nfguard.policy.internal).

They are the networks of the host's addresses (with their prefix lengths, and the peers of
point-to-point links) and the main table's on-link routes (no gateway: a VPN's or a
WireGuard peer's networks). A route covering a quarter of the address space or more (an
on-link default, a VPN's 0.0.0.0/1 halves) is the internet, not a network of the host's.
The kernel is read on a timer (`tend`, from the daemon's loop, never on the verdict path),
so a DHCP lease or a VPN coming up is followed within a second; the parsers are pure.
The same routes, each with its interface (`read_routes`), tell which addresses are
forwarded clients' (nfguard.undecided).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import psutil  # type: ignore[import-untyped]

from nfguard.lru import Memo
from nfguard.policy.internal import Internal, Network, address_of, classify, network

log = logging.getLogger(__name__)

ROUTE_V4 = "/proc/net/route"
ROUTE_V6 = "/proc/net/ipv6_route"
CHECK_INTERVAL = 1.0  # seconds between reads of the kernel's addresses and routes
MIN_PREFIX = {4: 8, 6: 16}  # shorter prefixes are not a network of the host's own
MAX_REMEMBERED = 4096  # addresses whose kind is remembered until the networks change
_RTF_GATEWAY, _RTF_REJECT = 0x0002, 0x0200

Addresses = Iterable[tuple[str, str | None, str | None]]  # (address, netmask, peer)


class Route(NamedTuple):
    """A route of the kernel's table: where it leads, out of which interface."""

    network: Network
    device: str
    metric: int
    onlink: bool  # no gateway: the network is on the link (or the tunnel) itself


def routes_v4(text: str) -> list[Route]:
    """The routes of /proc/net/route (the main table), but reject ones."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, flags, metric, mask = (int(fields[1], 16), int(fields[3], 16),
                                                int(fields[6]), int(fields[7], 16))
        except ValueError:
            continue
        if flags & _RTF_REJECT:
            continue
        # The kernel prints the network-order word as a native integer.
        address = int.from_bytes(destination.to_bytes(4, sys.byteorder), "big")
        netmask = int.from_bytes(mask.to_bytes(4, sys.byteorder), "big")
        found.append(Route(Network(4, address & netmask, netmask), fields[0], metric,
                           not flags & _RTF_GATEWAY))
    return found


def routes_v6(text: str) -> list[Route]:
    """The routes of /proc/net/ipv6_route, but reject ones."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            destination, prefix, metric, flags = (int(fields[0], 16), int(fields[1], 16),
                                                  int(fields[5], 16), int(fields[8], 16))
        except ValueError:
            continue
        if flags & _RTF_REJECT or not 0 <= prefix <= 128:
            continue
        mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
        found.append(Route(Network(6, destination & mask, mask), fields[9], metric,
                           not flags & _RTF_GATEWAY))
    return found


def parse_routes_v4(text: str) -> list[Network]:
    """The on-link networks of /proc/net/route (the main table): no gateway, not reject."""
    return _wide_enough([route.network for route in routes_v4(text) if route.onlink])


def parse_routes_v6(text: str) -> list[Network]:
    """The on-link networks of /proc/net/ipv6_route: no gateway, not reject."""
    return _wide_enough([route.network for route in routes_v6(text) if route.onlink])


def address_networks(addresses: Addresses) -> list[Network]:
    """The networks of the host's addresses: (address, netmask, point-to-point peer)."""
    found = []
    for address, netmask, peer in addresses:
        try:
            if netmask:
                length = bin(int(ipaddress.ip_address(netmask))).count("1")
                found.append(network(f"{address.split('%', 1)[0]}/{length}"))
            if peer:
                found.append(network(peer.split("%", 1)[0]))
        except ValueError:
            continue
    return _wide_enough(found)


def _wide_enough(networks: list[Network]) -> list[Network]:
    """Without the ones that cover too much of the address space to be the host's own."""
    return [n for n in networks if bin(n.mask).count("1") >= MIN_PREFIX[n.version]]


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read(1 << 20)
    except OSError:
        return ""


def read_addresses() -> list[tuple[str, str | None, str | None]]:
    """The host's interface addresses, as getifaddrs(3) gives them."""
    return [(a.address, a.netmask, a.ptp)
            for addresses in psutil.net_if_addrs().values() for a in addresses
            if a.family in (socket.AF_INET, socket.AF_INET6)]


def read_routes() -> list[Route]:
    """The kernel's routes now, both families."""
    return routes_v4(_read(ROUTE_V4)) + routes_v6(_read(ROUTE_V6))


def read_networks() -> tuple[Network, ...]:
    """This host's connected networks now, each once, in a stable order."""
    found = (address_networks(read_addresses()) + parse_routes_v4(_read(ROUTE_V4))
             + parse_routes_v6(_read(ROUTE_V6)))
    return tuple(sorted(set(found)))


def no_networks() -> tuple[Network, ...]:
    """A reader for where the host's networks are not wanted (tests, tools): only the
    fixed ranges are inside."""
    return ()


class HostNetworks:
    """The host's connected networks as last read, and the kind of an address given them."""

    def __init__(self, read: Callable[[], tuple[Network, ...]] = read_networks,
                 interval: float = CHECK_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.interval = interval
        self.clock = clock
        self.networks: tuple[Network, ...] = ()
        self._kinds: Memo[tuple[int, int], Internal] = Memo(MAX_REMEMBERED)
        self._texts: Memo[str, Internal] = Memo(MAX_REMEMBERED)
        self._checked_at: float | None = None
        self.tend()

    def tend(self) -> bool:
        """Read the kernel again when the last read is `interval` old; whether the
        networks changed. The daemon's loop calls this, so no packet waits for it."""
        now = self.clock()
        if self._checked_at is not None and 0 <= now - self._checked_at < self.interval:
            return False
        self._checked_at = now
        try:
            networks = self.read()
        except Exception:  # the last known networks stay
            log.exception("cannot read this host's networks")
            return False
        if networks == self.networks:
            return False
        self.networks = networks
        self._kinds = Memo(MAX_REMEMBERED)
        self._texts = Memo(MAX_REMEMBERED)
        log.info("this host's networks: %s", self.describe())
        return True

    def kind(self, version: int, address: int) -> Internal:
        """What kind of address this is (nfguard.policy.internal), remembered."""
        key = (version, address)
        found = self._kinds.get(key)
        if found is None:
            found = self._kinds.put(key, classify(version, address, self.networks))
        return found

    def kind_of(self, ip: str) -> Internal:
        """`kind` of an address in text (as DNS answers give them), remembered too."""
        found = self._texts.get(ip)
        if found is None:
            found = self._texts.put(ip, self.kind(*address_of(ip)))
        return found

    def describe(self) -> str:
        return ", ".join(_text(n) for n in self.networks) or "none"


def _text(net: Network) -> str:
    kind = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
    return f"{kind(net.address)}/{bin(net.mask).count('1')}"
