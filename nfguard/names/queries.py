"""Every DNS query the host sends, judged by its name before it leaves.

The ruleset queues every query datagram and every TCP segment with bytes to port 53 (on
output, on forward from engine.forward_from's interfaces, and over loopback to a local stub
resolver), whatever its flow's verdict: glibc sends A and AAAA on one socket, a tunnel
thousands. Here each is read (a UDP datagram is one query; a TCP stream is read in order,
every message, pipelined ones too, a message split over segments held until it is whole),
judged by its sender's client (policy.resolve.QueryJudge) and recorded:

- allowed, or audit mode: the packet passes (the flow's ct mark never lets a later query
  skip the engine: the ruleset queues queries before it reads the mark);
- refused over UDP: the datagram is dropped (its flow undecided) and the client gets a
  REFUSED answer at once (inject.Refusals);
- refused over TCP: the segment is cut (a reset: the client fails at once, never waits);
- unreadable (not a QUERY: NOTIFY, UPDATE; or not DNS at all): dropped and counted.

What is judged must be what the server reads, byte for byte, or the stream is cut: a
packet the queue copied only in part, urgent data (the server's recv() skips the urgent
byte, so it would frame the stream otherwise), and a stream this path no longer follows
(pushed out of its bounded table: read afresh from a later segment, mid-message, its bytes
could be framed at will). A stream pushed out is cut in the kernel at once, its verdict
written into its ct mark (`cut`), which the ruleset reads before queueing a query.

Allowed queries are recorded once per (sender, name, type, decision) per DEDUP_WINDOW, so a
busy host's log stays readable; refused ones always.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from nfguard import marks
from nfguard.audit import query_event
from nfguard.engine import Engine
from nfguard.marks import DROP, HOLD, Held
from nfguard.metrics.counts import Stats
from nfguard.names.inject import Refusals, Unsent
from nfguard.names.streams import HALF, RST, SEQ, URG, bound, flow_key, in_order
from nfguard.policy.clients import match_key
from nfguard.policy.model import ALLOW, Client
from nfguard.policy.resolve import Queries, QueryDecision
from nfguard.procs import ProcessInfo
from nfguard.wire.dns import DnsQuery, TcpDnsStream, parse_query, refusal, type_name
from nfguard.wire.errors import WireError
from nfguard.wire.ip import UDP, Packet

MAX_STREAMS = 4096  # DNS-over-TCP query streams followed at once (LRU)
MAX_HELD = 64  # segments of one unfinished query held (a bigger one is cut)
# Bytes of a stream kept as read, so a retransmit can be checked against them: a raw socket
# (a container's CAP_NET_RAW) can resend a sequence range whose first copy the server
# dropped (an option it rejects) with other bytes in it. Older retransmits are cut.
REREAD = 4096
DEDUP_WINDOW = 10.0  # seconds an allowed (sender, name, type) is recorded once
MAX_DEDUP = 8192


class _Stream:
    """One client's TCP stream to a DNS server: its framing and the segments of the
    message not yet whole."""

    __slots__ = ("held", "read", "reader")

    def __init__(self) -> None:
        self.reader = TcpDnsStream()
        self.held: list[tuple[Any, int]] = []  # (token, mark)
        self.read = bytearray()  # the last REREAD bytes read, up to the next sequence number

    def resends_what_was_read(self, next_seq: int, packet: Packet, body: bytes) -> bool:
        """Whether the segment's bytes before `next_seq` (if any) are the very bytes read
        there; False when they differ or lie too far back to tell."""
        behind = (next_seq - packet.tcp_seq) & SEQ
        if not body or not 0 < behind < HALF:
            return True
        read = self.read
        return behind <= len(read) and body[:behind] == read[len(read) - behind:][:len(body)]

    def add(self, new: bytes) -> None:
        self.read += new
        del self.read[:-REREAD]


class QueryPath:
    """Reads, judges and records the host's DNS queries; refuses what the policy denies."""

    def __init__(self, stats: Stats, write: Callable[[dict[str, Any], Any], None],
                 release: Callable[[Any, int], None], refusals: Refusals | None = None,
                 setting: str = Queries.POLICY, clock: Callable[[], float] = time.time,
                 cut: Callable[[list[tuple[Hashable, int]]], object] = lambda verdicts: None,
                 ) -> None:
        self.stats = stats
        # records an event of the sender (the audit log's, errors counted there)
        self.write = write
        self.release = release  # gives a held segment its verdict: (token, mark)
        self.cut = cut  # writes (flow key, verdict bits) into flows' ct marks
        # None: built, never sent (a pipeline outside the daemon must not write packets)
        self.refusals = refusals if refusals is not None else Unsent()
        self.setting = setting  # [names] queries
        self.clock = clock
        self._streams: OrderedDict[tuple, list[Any]] = OrderedDict()
        self._recorded: OrderedDict[tuple, float] = OrderedDict()

    def configure(self, setting: str) -> None:
        """A reload's [names] queries."""
        self.setting = setting

    def handle(self, engine: Engine, packet: Packet, payload: bytes, mark: int, token: Any,
               process: ProcessInfo | None) -> int | Held:
        """The verdict on a query packet whose flow may carry it."""
        body = payload[packet.payload_offset:packet.total_length]
        unseen = len(payload) < packet.total_length  # the queue's copy was cut short
        if packet.proto == UDP and unseen:
            self.stats.dns_queries_unparseable += 1
            return DROP
        if packet.proto == UDP:
            refused, unreadable = self._read_and_judge(engine, packet, [body], process)
            if refused:  # none of it leaves; the client hears at once
                self.refusals.send(packet, refusal(refused[0]))
            return DROP if refused or unreadable else marks.with_verdict(mark, marks.ALLOW)
        key = flow_key(packet)
        if unseen or packet.tcp_flags & (URG | RST):  # a reset's bytes are never read
            self.stats.dns_queries_unparseable += 1
            cut = self._streams.get(key)
            if cut is None:
                return marks.with_verdict(mark, marks.DENY)
            return self._settle(key, cut[1], mark, marks.DENY)
        known = self._streams.get(key)
        if known is None:
            self._make_room()
        elif not known[1].resends_what_was_read(known[0], packet, body):
            self.stats.dns_queries_unparseable += 1
            return self._settle(key, known[1], mark, marks.DENY)
        taken = in_order(self._streams, key, packet, body, MAX_STREAMS, _Stream)
        if taken is None:  # past the next byte: the client sends it again
            return DROP
        state, new = taken
        if state is None:
            return marks.with_verdict(mark, marks.ALLOW)
        stream: _Stream = state[1]
        stream.add(new)
        if not new:  # a retransmit: of what was judged, or of what is held unjudged
            return DROP if stream.held else marks.with_verdict(mark, marks.ALLOW)
        try:
            messages = stream.reader.feed(new)
        except WireError:
            self.stats.dns_queries_unparseable += 1
            return self._settle(key, stream, mark, marks.DENY)
        if not messages:  # a message not yet whole: held, so none of it leaves
            if len(stream.held) >= MAX_HELD:
                return self._settle(key, stream, mark, marks.DENY)
            stream.held.append((token, mark))
            return HOLD
        refused, unreadable = self._read_and_judge(engine, packet, messages, process)
        # A refused (or unreadable) message cuts the stream: a reset, the client fails at once.
        return self._settle(key, stream, mark,
                            marks.DENY if refused or unreadable else marks.ALLOW)

    def _make_room(self) -> None:
        """Stop following the least recently used streams past MAX_STREAMS - 1, and cut
        them: read afresh later, mid-message, their framing would be the sender's choice."""
        pushed_out: list[tuple[Hashable, int]] = []
        while len(self._streams) >= MAX_STREAMS:
            key, (_, stream) = self._streams.popitem(last=False)
            self._settle(key, stream, 0, marks.DENY)
            pushed_out.append((key, marks.DENY))
        if pushed_out:
            self.stats.dns_streams_cut += len(pushed_out)
            self.cut(pushed_out)

    def _settle(self, key: tuple, stream: _Stream, mark: int, bits: int) -> int:
        """This segment's verdict, and the held ones' (a cut stream is forgotten)."""
        held, stream.held = stream.held, []
        for held_token, held_mark in held:
            self.release(held_token, marks.with_verdict(held_mark, bits))
        if bits != marks.ALLOW:
            self._streams.pop(key, None)
        return marks.with_verdict(mark, bits)

    def _read_and_judge(self, engine: Engine, packet: Packet, messages: list[bytes],
               process: ProcessInfo | None) -> tuple[list[DnsQuery], bool]:
        """Judge and record each message: the queries refused, and whether one could not be
        read (in audit mode nothing is refused and everything may pass)."""
        now = self.clock()
        refused: list[DnsQuery] = []
        unreadable = False
        for message in messages:
            try:
                query = parse_query(message)
            except WireError:
                self.stats.dns_queries_unparseable += 1
                unreadable = True
                continue
            decision, mode = engine.judge_query(process, query.name, self.setting)
            self.stats.dns_queries += 1
            verdict = decision.action if mode == "enforce" else ALLOW
            if verdict != ALLOW:
                refused.append(query)
            self._record(decision, query, mode, verdict, packet, now, process)
        self.stats.dns_queries_refused += len(refused)
        return refused, unreadable and engine.enforces(process)

    def _record(self, decision: QueryDecision, query: DnsQuery, mode: str, verdict: str,
                packet: Packet, now: float, process: ProcessInfo | None) -> None:
        if decision.action == ALLOW:
            key = (None if process is None else match_key(process), decision.name,
                   query.qtype, decision.client, decision.rule)
            until = self._recorded.get(key)
            if until is not None and 0 <= until - now <= DEDUP_WINDOW:
                return
            self._recorded[key] = now + DEDUP_WINDOW
            self._recorded.move_to_end(key)
            bound(self._recorded, MAX_DEDUP)
        self.write(query_event(decision, type_name(query.qtype), mode, verdict, packet, now,
                               process), process)


def queued(setting: str, clients: Iterable[Client]) -> bool:
    """Whether any query is judged, so the ruleset must queue them: not when [names]
    queries is "any" and no client turns judging on for itself."""
    return setting != Queries.ANY or any(c.queries == Queries.POLICY for c in clients)
