"""DNS over TCP, both ways: a stream's bytes taken in order, segment by segment.

Answers (learner) and queries (queries) are read from TCP streams the same way: a segment
that starts past the next byte is refused (its sender sends it again), one that starts
before it (a retransmit) gives only what is new, and the table of streams is bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from nfguard.wire.ip import Packet

SYN, FIN, RST, URG = 0x02, 0x01, 0x04, 0x20
SEQ = 0xFFFFFFFF  # sequence numbers wrap at 2**32
HALF = 1 << 31  # a difference past half the space is negative

# A packet's flow: (proto, src, sport, dst, dport), taken by position in one C call (a
# function reading five attributes costs several times more, once per queued packet).
flow_key: Callable[[Packet], tuple] = itemgetter(
    *(Packet._fields.index(field) for field in ("proto", "src", "sport", "dst", "dport")))


def bound(table: OrderedDict, limit: int) -> None:
    """Drop least recently used entries past `limit`."""
    while len(table) > limit:
        table.popitem(last=False)


def in_order(streams: OrderedDict[tuple, list[Any]], key: tuple, packet: Packet, body: bytes,
             limit: int, make: Callable[[], Any]) -> tuple[list[Any] | None, bytes] | None:
    """The stream's state ([next sequence number, make()'s reader]) and the bytes of this
    segment not seen before; None when the segment starts past the next byte. A
    SYN starts the stream; a stream first met mid-way starts at the segment."""
    if packet.tcp_flags & SYN:
        state = streams[key] = [(packet.tcp_seq + 1) & SEQ, make()]
        bound(streams, limit)
        return state, b""
    known = streams.get(key)
    if not body:
        return known, b""
    if known is None:
        state = streams[key] = [packet.tcp_seq, make()]
        bound(streams, limit)
    else:
        state = known
        streams.move_to_end(key)
    offset = (packet.tcp_seq - state[0]) & SEQ
    if offset >= HALF:  # starts before the next byte: a retransmit, maybe overlapping
        body = body[(state[0] - packet.tcp_seq) & SEQ:]
    elif offset:
        return None
    state[0] = (state[0] + len(body)) & SEQ
    return state, body


def closing(packet: Packet) -> bool:
    """Whether the segment ends its stream (FIN or RST)."""
    return bool(packet.tcp_flags & (FIN | RST))
