"""Pending flows: packets held until the client has presented the name it wants.

Pure (sans-IO): the pipeline hands in segments and datagrams with an opaque token for each
(the queue adapter's packet object) and gets back, once the name is known or known to be
absent, the tokens to release in stream order. Nothing here gives verdicts or reads clocks.

A TCP flow's first in-order payload byte picks the reader: a TLS handshake record
(0x16) → `ClientHelloReader` (evidence "sni"), an HTTP method → `RequestHeadReader`
("host"), anything else (server-first protocols, SSH banners, ...) → no name. Only
in-order bytes are fed, by TCP sequence number; duplicates and retransmits are held and
released with the same verdict, segments ahead of a gap are held and fed once the gap
fills. A UDP flow (QUIC on udp/443) feeds each datagram to `QuicHelloAssembler`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, NamedTuple

from nfguard.engine import HOST, QUIC, SNI
from nfguard.wire.errors import WireError
from nfguard.wire.http import RequestHead, RequestHeadReader
from nfguard.wire.ip import Packet
from nfguard.wire.quic import QuicHelloAssembler
from nfguard.wire.tls import ClientHelloReader, HelloResult

MAX_FLOWS = 65536  # pending flows remembered (LRU)
MAX_HELD_PER_FLOW = 64  # packets one flow may hold; a hello needs a handful
MAX_HELD = 2048  # packets all flows may hold together (the kernel queue holds 4096)
MAX_AHEAD = 32  # out-of-order segments kept for reassembly per flow
_HALF = 1 << 31
_SEQ = 0xFFFFFFFF

_HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
                 b"CONNECT ", b"TRACE ", b"PRI ")


class Sniffed(NamedTuple):
    """What the flow presented: a name and its evidence, or name None (none or unknown)."""

    name: str | None
    evidence: str | None


NO_NAME = Sniffed(None, None)


def looks_like_http(data: bytes) -> bool:
    """Whether client bytes start with an HTTP method (or could, being a short prefix)."""
    if data.startswith(_HTTP_METHODS):
        return True
    return len(data) < 8 and any(method.startswith(data) for method in _HTTP_METHODS)


class PendingFlow:
    """One flow waiting for its name: the first packet, DNS names, reader and held packets."""

    __slots__ = ("_ahead", "_next", "_reader", "base", "decision", "dns_names", "evidence",
                 "held", "key", "packet", "process", "result", "since")

    def __init__(self, key: Hashable, packet: Packet, dns_names: tuple[tuple[str, str], ...],
                 base_seq: int | None = None, process: Any = None) -> None:
        self.key = key
        self.packet = packet  # the packet that opened the flow (for the audit event)
        self.dns_names = dns_names
        self.process = process
        self.base = base_seq  # TCP: sequence number of the first payload byte, once known
        self._next = 0  # TCP: next in-order offset from base
        self._ahead: dict[int, bytes] = {}  # TCP: offset -> payload beyond a gap
        self._reader: ClientHelloReader | RequestHeadReader | QuicHelloAssembler | None = None
        self.evidence: str | None = None
        self.held: list[tuple[int, int, Any, int]] = []  # (offset, arrival, token, mark)
        self.since: float | None = None  # when it first held a packet
        self.result: Sniffed | None = None  # set once the name is known (or known absent)
        self.decision: Any = None  # the pipeline's final decision, once made

    # -- TCP ---------------------------------------------------------------------------
    def tcp_segment(self, seq: int, payload: bytes, token: Any, mark: int, now: float,
                    complete: bool = True) -> Sniffed | None:
        """Hold one segment with payload; the result once known, else None.

        `complete` False: the queue copied only part of the segment; what it has is fed,
        and if that does not finish the hello the flow is decided without a name.
        """
        if self.base is None:
            self.base = seq  # no SYN seen (engine restarted): sync on this segment
        offset = (seq - self.base) & _SEQ
        if offset >= _HALF:
            offset -= 1 << 32  # before the first byte: an old duplicate
        self._hold(offset, token, mark, now)
        if self.result is not None:
            return self.result
        end = offset + len(payload)
        if end > self._next:
            if offset <= self._next:
                self._feed(payload[self._next - offset:])
                self._drain_ahead()
            elif len(self._ahead) < MAX_AHEAD:
                self._ahead[offset] = payload
            else:
                self.result = NO_NAME
        if self.result is None and not complete:
            self.result = NO_NAME
        if self.result is None and len(self.held) > MAX_HELD_PER_FLOW:
            self.result = NO_NAME
        return self.result

    def _drain_ahead(self) -> None:
        while self._ahead and self.result is None:
            progressed = False
            for offset in sorted(self._ahead):
                data = self._ahead[offset]
                if offset + len(data) <= self._next:
                    del self._ahead[offset]  # wholly before the next byte: already fed
                elif offset <= self._next:
                    del self._ahead[offset]
                    self._feed(data[self._next - offset:])
                    progressed = True
                    break
            if not progressed:
                return

    def _feed(self, data: bytes) -> None:
        self._next += len(data)
        if self._reader is None:
            if data[:1] == b"\x16":
                self._reader, self.evidence = ClientHelloReader(), SNI
            elif looks_like_http(data):
                self._reader, self.evidence = RequestHeadReader(), HOST
            else:
                self.result = NO_NAME
                return
        self._result_from(data)

    # -- UDP (QUIC) --------------------------------------------------------------------
    def datagram(self, data: bytes, token: Any, mark: int, now: float) -> Sniffed | None:
        """Hold one client datagram of a udp/443 flow; the result once known, else None."""
        self._hold(len(self.held), token, mark, now)
        if self.result is not None:
            return self.result
        if self._reader is None:
            if not data or not data[0] & 0x80:
                self.result = NO_NAME  # not a QUIC long header: not QUIC, or not its start
                return self.result
            self._reader, self.evidence = QuicHelloAssembler(), QUIC
        self._result_from(data)
        if self.result is None and len(self.held) > MAX_HELD_PER_FLOW:
            self.result = NO_NAME
        return self.result

    # -- common ------------------------------------------------------------------------
    def _result_from(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        try:
            found = reader.feed(data)
        except WireError:
            self.result = NO_NAME
            return
        if isinstance(found, HelloResult):
            self.result = Sniffed(found.sni, self.evidence) if found.sni else NO_NAME
        elif isinstance(found, RequestHead):
            self.result = Sniffed(found.host, HOST) if found.host else NO_NAME

    def _hold(self, offset: int, token: Any, mark: int, now: float) -> None:
        if self.since is None:
            self.since = now
        self.held.append((offset, len(self.held), token, mark))

    def release(self) -> list[tuple[Any, int]]:
        """The held (token, mark) pairs in stream order (arrival order for equal offsets)."""
        held = sorted(self.held, key=lambda h: (h[0], h[1]))
        self.held = []
        self._ahead.clear()
        self._reader = None
        return [(token, mark) for _offset, _arrival, token, mark in held]


class FlowTable:
    """Pending flows by key, least recently used first, bounded; holding flows by age."""

    def __init__(self, max_flows: int = MAX_FLOWS, max_held: int = MAX_HELD) -> None:
        self.max_flows = max_flows
        self.max_held = max_held
        self._flows: OrderedDict[Hashable, PendingFlow] = OrderedDict()
        self._holding: dict[Hashable, PendingFlow] = {}  # in order of `since`
        self._counted: dict[Hashable, int] = {}  # held packets per holding flow, last seen
        self.held_packets = 0  # their sum, kept as it changes (summed, it cost O(flows))
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._flows)

    @property
    def holding(self) -> int:
        """Flows that hold packets now."""
        return len(self._holding)

    def get(self, key: Hashable) -> PendingFlow | None:
        flow = self._flows.get(key)
        if flow is not None:
            self._flows.move_to_end(key)
        return flow

    def add(self, flow: PendingFlow) -> list[PendingFlow]:
        """Store a flow; return evicted flows that still hold packets (decide them now)."""
        self._flows[flow.key] = flow
        self._flows.move_to_end(flow.key)
        evicted = []
        while len(self._flows) > self.max_flows:
            _key, old = self._flows.popitem(last=False)
            self.evictions += 1
            if self._unhold(old.key) is not None:
                evicted.append(old)
        return evicted

    def _unhold(self, key: Hashable) -> PendingFlow | None:
        self.held_packets -= self._counted.pop(key, 0)
        return self._holding.pop(key, None)

    def mark_holding(self, flow: PendingFlow) -> list[PendingFlow]:
        """Note that `flow` holds packets; return the oldest holders over the packet budget."""
        self._holding.setdefault(flow.key, flow)
        now_held = len(flow.held)
        self.held_packets += now_held - self._counted.get(flow.key, 0)
        self._counted[flow.key] = now_held
        over = []
        if len(self._holding) > 1 and self.held_packets > self.max_held:
            oldest = next(iter(self._holding.values()))
            if oldest is not flow:
                over.append(oldest)
        return over

    def settled(self, flow: PendingFlow) -> None:
        """The flow is decided; it stays known (late packets get the same verdict)."""
        self._unhold(flow.key)

    def remove(self, key: Hashable) -> None:
        self._flows.pop(key, None)
        self._unhold(key)

    def expired(self, now: float, timeout: float) -> list[PendingFlow]:
        """Holding flows that have waited `timeout` seconds or more, oldest first."""
        out = []
        for flow in self._holding.values():
            if flow.since is None or now - flow.since < timeout:
                break
            out.append(flow)
        return out
