"""What every netlink message starts with; shared by the queue adapter, sock_diag and the
proc connector code."""

from __future__ import annotations

import struct
from collections.abc import Iterator

NLMSG_ERROR = 0x02
NLMSG_DONE = 0x03
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04

# struct nlmsghdr: len, type, flags, seq, pid
NLMSGHDR = struct.Struct("=IHHII")

# Where messages are read from: a whole datagram, or the part of a kept receive buffer that
# one read filled.
Buffer = bytes | bytearray | memoryview

# struct nlattr: len, type; type's top two bits are flags (nested, network byte order)
NLA = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF


def attributes(data: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, value start, value end) of each attribute in data[start:end]; stops at the
    first one that overruns it."""
    while start + NLA.size <= end:
        length, kind = NLA.unpack_from(data, start)
        if length < NLA.size or start + length > end:
            return
        yield kind & NLA_TYPE_MASK, start + NLA.size, start + length
        start += (length + 3) & ~3


def attribute(kind: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    return NLA.pack(NLA.size + len(value), kind) + value + b"\0" * (-len(value) % 4)
