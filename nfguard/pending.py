"""Pending flows: the one place that holds a flow's packets, reads the name its client
presents, and says what came of it (an Outcome).

Pure (sans-IO): the pipeline hands in each packet of a pending flow with an opaque token
(the queue adapter's packet) and gets back a Step (the packet is held, or it is a bare
segment that may pass) or the flow's Outcome, after which every held token is released in
stream order with the flow's one verdict. Nothing here gives verdicts or reads clocks.

The Outcome is one of:
- Named(name, evidence): the client presented a name (TLS SNI, HTTP Host, QUIC SNI);
- Unreadable(why): the client speaks, or may speak, TLS or HTTP (or QUIC on udp/443) but
  its name cannot be known: a hello the reader rejects or without a name, the hello
  timeout, too many segments held, a copy cut short, a gap too long, urgent data (the
  server drops the urgent byte, so it would read another hello than ours), a
  payload-less segment carrying options. The address's DNS names must not decide then;
- OTHER_PROTOCOL: the first bytes are clearly neither TLS nor HTTP (see `classify`): the
  address and its DNS names decide, as at the SYN.

TCP: only in-order bytes are fed, by sequence number (a SYN's own data, TCP Fast Open,
starts at its seq+1 like the rest); duplicates and retransmits are held and released with
the same verdict, segments ahead of a gap are held and fed once the gap fills.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable
from enum import Enum, StrEnum
from operator import itemgetter
from typing import Any, Final, NamedTuple

from nfguard.policy.match import Evidence
from nfguard.wire.errors import WireError
from nfguard.wire.http import RequestHead, RequestHeadReader, could_start_request, head_in
from nfguard.wire.ip import TCP, Packet
from nfguard.wire.quic import QuicHelloAssembler
from nfguard.wire.tls import ClientHelloReader, HelloResult, hello_in

MAX_FLOWS = 65536  # pending flows remembered (LRU)
MAX_HELD_PER_FLOW = 64  # packets one flow may hold; a hello needs a handful
MAX_HELD = 2048  # packets all flows may hold together (the kernel queue holds 4096)
MAX_AHEAD = 32  # out-of-order segments kept for reassembly per flow
MAX_BANNER = 255  # an SSH identification line, CR LF included (RFC 4253 4.2)
_HALF = 1 << 31
_SEQ = 0xFFFFFFFF
_FIN, _SYN, _URG = 0x01, 0x02, 0x20


class Why(StrEnum):
    """Why a flow's name cannot be known (the audit event's nfguard.unreadable)."""

    MALFORMED = "malformed"  # the TLS/HTTP/QUIC reader rejected the bytes
    NO_NAME = "no_name"  # read whole, but it names no server
    HELLO_TIMEOUT = "hello_timeout"
    TOO_MANY_SEGMENTS = "too_many_segments"
    EVICTED = "evicted"  # pushed out by other flows' held packets
    COPY_CUT = "copy_cut"  # the queue copied only part of a packet
    GAP = "gap"  # too many segments ahead of a missing one
    URGENT = "urgent"  # urgent data: the server reads the stream without that byte
    NOT_BARE = "not_bare"  # a payload-less segment carried IP/TCP options or urgent bits
    NOT_QUIC_INITIAL = "not_quic_initial"  # udp/443 whose first datagram is no long header


class Named(NamedTuple):
    name: str
    evidence: Evidence


class Unreadable(NamedTuple):
    why: Why


class OtherProtocol(NamedTuple):
    """The first bytes are clearly neither TLS nor HTTP (an SSH banner, binary)."""


OTHER_PROTOCOL = OtherProtocol()
_named = tuple.__new__  # a Named without the Python-level __new__ NamedTuple gives it
_MALFORMED = Unreadable(Why.MALFORMED)
_NO_NAME = Unreadable(Why.NO_NAME)
Outcome = Named | Unreadable | OtherProtocol


class Step(Enum):
    """What became of a packet while the flow's outcome is not known yet."""

    HELD = "held"  # held until the outcome
    BARE = "bare"  # a payload-less segment that carries nothing: it passes, still pending


class Kind(Enum):
    TLS = "tls"
    HTTP = "http"
    OTHER = "other"


# Members as module constants: one read off its Enum class costs a few hundred
# instructions, and a flow's packets meet several of them.
HELD: Final = Step.HELD
BARE: Final = Step.BARE
_TLS, _HTTP, _OTHER = Kind.TLS, Kind.HTTP, Kind.OTHER
_SNI, _HOST, _QUIC = Evidence.SNI, Evidence.HOST, Evidence.QUIC


_TLS_RECORDS = frozenset(range(0x14, 0x18))  # change_cipher_spec, alert, handshake, data
# First bytes that could start an HTTP request (a token character, CR, LF), asked once.
_REQUEST_STARTS = frozenset(b for b in range(256) if could_start_request(bytes((b,))))
_SSH = b"SSH-"
# An SSH client's identification line, and nothing an HTTP server could take for a
# request line ("SSH-2.0-x / HTTP/1.1" has a token method).
_SSH_LINE = re.compile(rb"SSH-[0-9][!-~]*( [ -~]*)?\r?\n")
_HTTP_VERSION = re.compile(rb" HTTP/")


def classify(prefix: bytes) -> Kind | None:
    """Which reader a TCP stream's first bytes go to; None while too few to tell.

    TLS is any TLS record (0x14-0x17: a server may take an alert or a change_cipher_spec
    before the hello; the reader wants a handshake and rejects the rest as unreadable).
    Anything that could start an HTTP request (a token character, or CR/LF) is HTTP, so a
    request the reader rejects counts as unreadable, never as another protocol. Clearly
    other: a first byte that cannot start either, or a whole SSH identification line that
    no HTTP server could read as a request line.
    """
    if not prefix:
        return None
    first = prefix[0]
    if first in _TLS_RECORDS:
        return _TLS
    if first not in _REQUEST_STARTS:  # neither a token character nor CR/LF
        return _OTHER
    # Slices are compared only when the first byte is SSH's "S" (a request rarely starts so).
    if first == _SSH[0] and prefix[:len(_SSH)] == _SSH[:len(prefix)]:
        end = prefix.find(b"\n", 0, MAX_BANNER)  # the same answer however the line came
        if end < 0:
            return None if len(prefix) < MAX_BANNER else _HTTP
        line = prefix[:end + 1]
        if _SSH_LINE.fullmatch(line) and not _HTTP_VERSION.search(line):
            return _OTHER
    return _HTTP


def carries_nothing(packet: Packet, raw: bytes) -> bool:
    """Whether a payload-less TCP segment is as bare as the kernel's own: no IP options
    or IPv6 extension headers, no TCP options beyond NOP, EOL, timestamps and SACK (and
    on a SYN the handshake's: MSS, window scale, SACK permitted, a Fast Open cookie,
    MPTCP's MP_CAPABLE), no urgent flag or pointer. Anything else could carry bytes to
    the server."""
    if packet.version == 4:
        start = (raw[0] & 0x0F) * 4
        if start != 20:
            return False
    else:
        start = 40
        if raw[6] != TCP:
            return False
    if packet.tcp_flags & _URG or raw[start + 18:start + 20] != b"\0\0":
        return False
    allowed = _SYN_OPTIONS if packet.tcp_flags & _SYN else _SEGMENT_OPTIONS
    return _plain_options(raw[start + 20:packet.payload_offset], allowed)


# TCP option kind -> the lengths the kernel's own segments give it.
_SEGMENT_OPTIONS = {8: (10,), 5: (10, 18, 26, 34)}  # timestamps, SACK blocks
_SYN_OPTIONS = {**_SEGMENT_OPTIONS, 2: (4,), 3: (3,), 4: (2,), 30: (4,),
                34: (2, 6, 10, 14, 18)}  # + MSS, WS, SACK-permitted, MP_CAPABLE, TFO


def _plain_options(options: bytes, allowed: dict[int, tuple[int, ...]]) -> bool:
    at = 0
    while at < len(options):
        kind = options[at]
        if kind == 0:  # end of options: only zero padding may follow
            return not any(options[at:])
        if kind == 1:
            at += 1
            continue
        if at + 1 >= len(options):
            return False
        length = options[at + 1]
        if length not in allowed.get(kind, ()):
            return False
        at += length
    return at == len(options)


class PendingFlow:
    """One flow waiting for its name: the first packet, DNS names, reader and held packets."""

    __slots__ = ("_ahead", "_next", "_prefix", "_reader", "base", "decision", "dns_names",
                 "evidence", "held", "key", "outcome", "packet", "process", "since")

    def __init__(self, key: Hashable, packet: Packet, dns_names: tuple[tuple[str, str], ...],
                 process: Any = None) -> None:
        self.key = key
        self.packet = packet  # the packet that opened the flow (for the audit event)
        self.dns_names = dns_names
        self.process = process
        # TCP: sequence number of the first payload byte, once known (a SYN's seq + 1).
        self.base: int | None = ((packet.tcp_seq + 1) & _SEQ
                                 if packet.proto == TCP and packet.tcp_flags & _SYN else None)
        self._next = 0  # TCP: next in-order offset from base
        self._ahead: dict[int, bytes] = {}  # TCP: offset -> payload beyond a gap
        self._prefix = b""  # TCP: first bytes, until `classify` can tell
        self._reader: ClientHelloReader | RequestHeadReader | QuicHelloAssembler | None = None
        self.evidence = _SNI
        self.held: list[tuple[int, int, Any, int]] = []  # (offset, arrival, token, mark)
        self.since: float | None = None  # when it first held a packet
        self.outcome: Outcome | None = None  # set once known
        self.decision: Any = None  # the pipeline's final decision, once made

    # -- TCP ---------------------------------------------------------------------------
    def segment(self, packet: Packet, raw: bytes, token: Any, mark: int,
                now: float) -> Outcome | Step:
        """One TCP segment of the flow (the SYN too, when it carries data)."""
        _v, _p, _s, _d, _sp, _dp, _di, total, start, flags, seq = packet  # one unpacking
        if total <= start:
            if carries_nothing(packet, raw):
                return BARE  # ACK, FIN, RST with nothing on them
            self._hold(self._next, token, mark, now)
            return self.give_up(Why.NOT_BARE)
        data = raw[start:total]
        if flags & _SYN:
            seq = (seq + 1) & _SEQ  # Fast Open: the SYN's data starts after the SYN
        if self.base is None:
            self.base = seq  # no SYN seen (engine restarted): sync on this segment
        offset = (seq - self.base) & _SEQ
        if offset >= _HALF:
            offset -= 1 << 32  # before the first byte: an old duplicate
        self._hold(offset, token, mark, now)
        if self.outcome is not None:
            return self.outcome
        if flags & _URG:
            return self.give_up(Why.URGENT)
        following = self._next
        if offset + len(data) > following:
            if offset <= following:
                self._feed(data[following - offset:] if offset < following else data)
                if self._ahead:
                    self._drain_ahead()
            elif len(self._ahead) < MAX_AHEAD:
                self._ahead[offset] = data
            else:
                return self.give_up(Why.GAP)
        outcome = self.outcome
        return outcome if outcome is not None else self._after_feed(packet, raw)

    def _drain_ahead(self) -> None:
        while self._ahead and self.outcome is None:
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
        if self._reader is not None:
            self._read(data)
            return
        data = self._prefix + data
        kind = classify(data)
        if kind is None:
            self._prefix = data
            return
        self._prefix = b""
        if kind is _OTHER:
            self.outcome = OTHER_PROTOCOL
            return
        # The stream's first bytes: most hold the whole hello or head, read at once
        # (`hello_in`, `head_in`); the others go to a reader, which reassembles.
        found: HelloResult | RequestHead | None
        try:
            if kind is _TLS:
                self.evidence = _SNI
                found = hello_in(data)
            else:
                self.evidence = _HOST
                found = head_in(data)
        except WireError:
            self.outcome = _MALFORMED
            return
        if found is not None:
            self._found(found)
            return
        self._reader = ClientHelloReader() if kind is _TLS else RequestHeadReader()
        self._read(data)

    # -- UDP (QUIC) --------------------------------------------------------------------
    def datagram(self, packet: Packet, raw: bytes, token: Any, mark: int,
                 now: float) -> Outcome | Step:
        """One client datagram of a udp/443 flow."""
        data = raw[packet.payload_offset:packet.total_length]
        self._hold(len(self.held), token, mark, now)
        if self.outcome is not None:
            return self.outcome
        if self._reader is None:
            if not data or not data[0] & 0x80:
                return self.give_up(Why.NOT_QUIC_INITIAL)
            self._reader, self.evidence = QuicHelloAssembler(), _QUIC
        self._read(data)
        return self._after_feed(packet, raw)

    # -- common ------------------------------------------------------------------------
    def _after_feed(self, packet: Packet, raw: bytes) -> Outcome | Step:
        """What was fed may have finished the reading; if not, a cut copy (the rest of
        the packet is unseen) or too many held packets end it."""
        if self.outcome is not None:
            return self.outcome
        if packet.total_length > len(raw):
            return self.give_up(Why.COPY_CUT)
        if len(self.held) > MAX_HELD_PER_FLOW:
            return self.give_up(Why.TOO_MANY_SEGMENTS)
        return HELD

    def _read(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        try:
            found = reader.feed(data)
        except WireError:
            self.outcome = _MALFORMED
            return
        if found is not None:
            self._found(found)

    def _found(self, found: HelloResult | RequestHead) -> None:
        """The outcome of what a reader read whole: the name it presents, if any."""
        name = found.sni if isinstance(found, HelloResult) else found.host
        self.outcome = _named(Named, (name, self.evidence)) if name else _NO_NAME

    def give_up(self, why: Why) -> Outcome:
        """The outcome of a flow that must be decided now (timeout, eviction, a segment
        that spoils the reading): what was read if it was, else Unreadable(why)."""
        if self.outcome is None:
            self.outcome = Unreadable(why)
        return self.outcome

    def _hold(self, offset: int, token: Any, mark: int, now: float) -> None:
        if self.since is None:
            self.since = now
        self.held.append((offset, len(self.held), token, mark))

    def release(self) -> list[tuple[Any, int]]:
        """The held (token, mark) pairs in stream order (arrival order for equal offsets)."""
        held = self.held if len(self.held) < 2 else sorted(self.held, key=_STREAM_ORDER)
        self.held = []
        self._ahead.clear()
        self._reader = None
        self._prefix = b""
        return list(map(_TOKEN_MARK, held))


_STREAM_ORDER = itemgetter(0, 1)  # of a held packet: (offset, arrival)
_TOKEN_MARK = itemgetter(2, 3)  # of a held packet: what releases it


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
        self.waiting = 0  # flows not decided yet (decided ones stay, for late packets)
        # Undecided flows by when they opened, oldest first (see `silent`).
        self._opened: dict[Hashable, tuple[float, PendingFlow]] = {}

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._flows

    @property
    def holding(self) -> int:
        """Flows that hold packets now."""
        return len(self._holding)

    def get(self, key: Hashable) -> PendingFlow | None:
        flow = self._flows.get(key)
        if flow is not None:
            self._flows.move_to_end(key)
        return flow

    def add(self, flow: PendingFlow, now: float | None = None) -> list[PendingFlow]:
        """Store a flow (opened at `now`); return evicted flows that still hold packets
        (decide them now)."""
        old = self._flows.pop(flow.key, None)
        if old is not None:
            self._forget(old)
        self._flows[flow.key] = flow
        self.waiting += flow.decision is None
        if flow.decision is None and now is not None:
            self._opened[flow.key] = (now, flow)
        evicted = []
        while len(self._flows) > self.max_flows:
            _key, old = self._flows.popitem(last=False)
            self.evictions += 1
            self._forget(old)
            if self._unhold(old.key) is not None:
                evicted.append(old)
        return evicted

    def _forget(self, flow: PendingFlow) -> None:
        self.waiting -= flow.decision is None
        self._opened.pop(flow.key, None)

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

    def settled(self, flow: PendingFlow, decision: Any) -> None:
        """The flow is decided; it stays known (late packets get the same verdict)."""
        if flow.decision is None and self._flows.get(flow.key) is flow:
            self.waiting -= 1
        flow.decision = decision
        self._unhold(flow.key)
        self._opened.pop(flow.key, None)

    def silent(self, now: float, timeout: float) -> list[PendingFlow]:
        """Undecided flows that opened `timeout` seconds ago or more and hold nothing: they
        sent nothing to read yet, and their bare segments pass in the kernel while they
        wait, so they must not wait for ever. Oldest first."""
        out = []
        for opened, flow in self._opened.values():
            if now - opened < timeout:
                break
            if flow.key not in self._holding:
                out.append(flow)
        return out

    def expired(self, now: float, timeout: float) -> list[PendingFlow]:
        """Holding flows that have waited `timeout` seconds or more, oldest first."""
        out = []
        for flow in self._holding.values():
            if flow.since is None or now - flow.since < timeout:
                break
            out.append(flow)
        return out
