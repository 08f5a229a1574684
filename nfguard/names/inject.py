"""The refusal of a DNS query over UDP, written to its client from the server's address.

A refused query is dropped, so no server sees it; the client gets, at once, the answer
`wire.dns.refusal` built (REFUSED, id and question echoed), as a datagram from the server's
address and port 53 to the client's address and port: its resolver library reads a valid
answer and moves on instead of waiting for a timeout. The datagram is built here whole
(`datagram`, pure) and sent through a raw socket with its own IP header, carrying
marks.INJECTED so nfguard's ruleset lets it through without a verdict and without taking
it for a resolver's answer (neither queued nor held to the "answers on loopback only from
local addresses" rule). A container's client is written to at its address: the route
through its bridge takes it there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct

from nfguard import marks
from nfguard.wire.dns import DNS_PORT
from nfguard.wire.ip import Packet

log = logging.getLogger(__name__)

_UDP = 17
_TTL = 64


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def datagram(query: Packet, answer: bytes) -> bytes:
    """The IP datagram carrying `answer` back to the sender of `query` (a UDP query packet):
    from its destination address and port to its source address and port."""
    src, dst = ipaddress.ip_address(query.dst).packed, ipaddress.ip_address(query.src).packed
    length = 8 + len(answer)
    if query.version == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, _UDP, length)
    else:
        pseudo = src + dst + struct.pack("!IxxxB", length, _UDP)
    header = struct.pack("!HHHH", query.dport, query.sport, length, 0)
    checksum = _checksum(pseudo + header + answer) or 0xFFFF
    udp = struct.pack("!HHHH", query.dport, query.sport, length, checksum) + answer
    if query.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, _TTL, _UDP, 0,
                         src, dst)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        return ip + udp
    return struct.pack("!IHBB16s16s", 6 << 28, length, _UDP, _TTL, src, dst) + udp


class Refusals:
    """Raw sockets (one per family, opened when first needed) that send refusals."""

    def __init__(self) -> None:
        self._sockets: dict[int, socket.socket] = {}

    def send(self, query: Packet, answer: bytes) -> bool:
        """Write `answer` to the client of `query`; whether the kernel took it."""
        if query.dport != DNS_PORT:
            return False
        try:
            sock = self._socket(query.version)
            sock.sendto(datagram(query, answer), (query.src, 0))
        except OSError as error:
            log.warning("cannot send a DNS refusal to %s: %s", query.src, error)
            return False
        return True

    def _socket(self, version: int) -> socket.socket:
        sock = self._sockets.get(version)
        if sock is None:
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            # IPPROTO_RAW: the datagram carries its own IP header (IP_HDRINCL, and on IPv6
            # the same since Linux 4.5).
            sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, marks.INJECTED)
            sock.setblocking(False)
            self._sockets[version] = sock
        return sock

    def close(self) -> None:
        for sock in self._sockets.values():
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()


class Unsent(Refusals):
    """Refusals that are built but never sent: tests, and tools that replay packets."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[Packet, bytes]] = []

    def send(self, query: Packet, answer: bytes) -> bool:
        self.sent.append((query, answer))
        return False
