"""The verdict path for one queued packet: parse -> decide -> record -> mark.

This is the whole of what happens per packet; the queue adapter only moves bytes and
marks between the kernel and `Pipeline.handle`.

Three kinds of packet come here:
- the first packet of a new outbound flow (LOCAL_OUT, or FORWARD from a container or VM
  behind engine.forward_from's interfaces): decided at once from the address,
  the DNS names of the address and the policy, or made PENDING when the name the client
  will present (TLS SNI, HTTP Host, SNI in a QUIC Initial) could change the decision;
- packets of pending flows: held (no verdict yet) until the name is known, then released
  in stream order with the final verdict; one audit event per flow, at that point;
- DNS queries (a datagram or a TCP segment with bytes to port 53, on output, forwarded, or
  over loopback to a local stub): their flow is decided once like any flow's, then every
  query is judged by its name (names.queries);
- DNS queries from engine.forward_from's interfaces to a resolver on this host (LOCAL_IN,
  a gateway's dnsmasq): their names judged, as the sender's client says;
- DNS answers (source port 53 in the reply direction, marked ANSWER: on LOCAL_IN, or
  forwarded to a client): handed to the names package's learner, which learns their names
  before they are accepted.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from functools import partial
from typing import Any, cast

from nfguard import marks
from nfguard.audit import AuditLog, audit_event, flow_line
from nfguard.config import NamesConfig
from nfguard.denies import Denies
from nfguard.engine import DNS, Decision, Engine
from nfguard.hostnets import HostNetworks, no_networks
from nfguard.lru import Memo
from nfguard.marks import HOLD, Held
from nfguard.metrics.counts import Stats
from nfguard.names.cache import NameCache
from nfguard.names.inject import Refusals
from nfguard.names.learner import MAX_CHAINS, Learner, configure_name_cache, make_name_cache
from nfguard.names.peers import Peers
from nfguard.names.queries import QueryPath
from nfguard.names.resolvers import TrustedServers
from nfguard.names.streams import bound, flow_key
from nfguard.onetrip import OneTrip
from nfguard.pending import (
    BARE,
    HELD,
    FlowTable,
    Named,
    Outcome,
    PendingFlow,
    Unreadable,
    Why,
)
from nfguard.policy.clients import match_key
from nfguard.policy.model import ALLOW, DENY
from nfguard.procs import Attributor, ProcessInfo
from nfguard.wire.dns import DNS_PORT
from nfguard.wire.errors import WireError
from nfguard.wire.ip import TCP, TRANSPORT_NAMES, UDP, Packet, parse_packet

log = logging.getLogger(__name__)

LOCAL_IN = 1  # netfilter hooks (NFQA_PACKET_HDR's hook)
FORWARD = 2
LOCAL_OUT = 3
__all__ = ["FORWARD", "LOCAL_IN", "LOCAL_OUT", "MAX_CHAINS", "Pipeline", "make_name_cache"]
MAX_UDP_DECIDED = 4096  # UDP flows whose verdict a second early datagram gets (LRU)
UDP_DECIDED_FOR = 2.0  # seconds: enough for the kernel to confirm the first's entry
MAX_DNS_FLOWS = 4096  # flows to DNS servers whose verdict their later queries meet (LRU)
DNS_FLOW_IDLE = 30.0  # seconds: idle longer, the kernel's entry may be gone (a new flow)
_SYN = 0x02
UNSEEN_INTERVAL = 1.0  # seconds between looks at flows the kernel made pending (one trip)
MAX_NAME_SETS = 4096  # sets of an address's DNS names remembered in the engine's form


class Pipeline:
    # Writes verdicts into flows' ct marks, by flow key (nfguard.undecided.set_verdicts);
    # None: not at all (tests without a kernel).
    set_verdicts: Callable[[list[tuple[Hashable, int]]], object] | None = None
    # The flows the ruleset made pending at their SYN (marks.KERNEL_PENDING) that no
    # packet has brought to the engine yet, as (flow key, when it opened at the latest)
    # (nfguard.undecided.kernel_pending); None: not looked at (tests without a kernel).
    kernel_pending: Callable[[], list[tuple[Hashable, float]]] | None = None

    def __init__(
        self, engine: Engine, audit: AuditLog, stats: Stats,
        clock: Callable[[], float] = time.time,
        names: NameCache | None = None,
        settings: NamesConfig | None = None,
        release: Callable[[Any, int], None] | None = None,
        attributor: Attributor | None = None,
        peers: Peers | None = None,
        trusted: TrustedServers | None = None,
        refusals: Refusals | None = None,
        hostnets: HostNetworks | None = None,
    ) -> None:
        self.engine = engine  # swapped whole on reload
        self.attributor = attributor  # None: flows are decided without knowing the sender
        self.audit = audit
        self.stats = stats
        self.clock = clock
        self.settings = settings or NamesConfig()
        self.flows = FlowTable()
        self.denies = Denies()  # the last and the most frequent, for `nfguard status`
        # Gives a held packet its verdict later: (token, mark); the queue adapter's.
        self.release = release or _no_release
        self._udp_decided: OrderedDict[tuple, tuple[float, Any, int]] = OrderedDict()
        # This host's networks ([names] private), read from the kernel by the daemon's
        # loop (`tend`); by default none: only the fixed ranges are inside.
        self.hostnets = hostnets or HostNetworks(no_networks)
        # DNS answers: the names they teach; the host's resolvers: whose answers teach,
        # and the engine's "@resolvers".
        self.learner = Learner(
            names if names is not None else make_name_cache(self.settings),
            trusted or TrustedServers(self.settings.resolvers, clock=clock),
            stats, clock, peers, self.hostnets.kind_of)
        self.names: NameCache = self.learner.names
        self._dns_pairs: Memo[frozenset[str], tuple[tuple[str, str], ...]] = Memo(MAX_NAME_SETS)
        self.trusted: TrustedServers = self.learner.trusted
        self.learn = self.learner.learn
        self.receive_peers = self.learner.receive_peers
        # DNS queries: judged by name; their flows' verdicts, for the flows' later queries.
        self.queries = QueryPath(stats, self.write, lambda token, mark: self.release(token, mark),
                                 refusals, self.settings.queries, clock,
                                 cut=lambda verdicts: self.write_verdicts(verdicts, "cut"))
        self._dns_flows: OrderedDict[tuple, tuple[float, Engine, Any, int]] = OrderedDict()
        self.one_trip: OneTrip | None = None  # the kernel's one-trip sets (use_one_trip)
        self._unseen: dict[Hashable, float] = {}  # kernel-pending flow -> opened at the latest
        self._next_unseen = 0.0
        self._listing_until = 0.0  # kernel-pending flows are listed until then at least
        # Audit events wait here when deferred (defer_events): the verdict leaves first,
        # then flush_events builds and writes them, in the same process.
        self.defer_events = False
        # Audit work held back until the batch's verdicts left: each a call to make then.
        self._deferred: list[Callable[[], None]] = []

    def use_one_trip(self, one_trip: OneTrip) -> None:
        """Keep the kernel's one-trip sets after what DNS teaches and the policy allows."""
        self.one_trip = one_trip
        one_trip.kept_from = lambda address: self.engine.keeps_names_from(address)
        self.learner.listener = lambda held, now: one_trip.learnt(self.engine.policies,
                                                                  held, now)

    @property
    def peers(self) -> Peers | None:
        """The other workers, with engine.workers > 1."""
        return self.learner.peers

    @peers.setter
    def peers(self, peers: Peers | None) -> None:
        self.learner.peers = peers

    @property
    def _chains(self) -> OrderedDict[tuple[str, str], tuple[str, ...]]:
        return self.learner.chains  # the memory benchmark's gauge

    def configure(self, settings: NamesConfig) -> None:
        """A reload's [names] settings; what the cache learnt stays."""
        self.settings = settings
        configure_name_cache(self.names, settings)
        self.queries.configure(settings.queries)
        self.trusted.configure(settings.resolvers)

    # -- entry point ---------------------------------------------------------------------
    def handle(self, payload: bytes, mark: int, hook: int = LOCAL_OUT,
               token: Any = None, uid: int | None = None, indev: int = 0) -> int | Held:
        """The packet mark to accept the packet with (its verdict bits say allow, deny or
        pending), or HOLD: the packet is held, and `release(token, mark)` answers it later.
        `uid`: the owner of the packet's socket as the kernel gave it with the packet;
        `indev`: the interface index a forwarded packet came in on (0: sent by this host).
        """
        self.stats.packets += 1
        if hook != LOCAL_OUT and marks.is_answer(mark):  # to this host, or a forwarded client
            return self.learner.answer(payload, mark)
        engine = self.engine
        packet: Packet | None = None
        now: float | None = None
        process: ProcessInfo | None = None
        try:
            packet = parse_packet(payload)
            key = flow_key(packet)
            if mark & marks.MASK == marks.UNSEEN and hook == LOCAL_OUT:
                pass  # a flow's first sight (one trip): new, whatever its tuple's past
            elif mark & marks.PENDING == marks.PENDING or (packet.proto == UDP
                                                           and len(self.flows)):
                flow = self.flows.get(key)
                if flow is not None:
                    return self._pending(flow, packet, payload, mark, token)
            if hook == LOCAL_IN or (packet.dport == DNS_PORT and (packet.proto == UDP or (
                    packet.proto == TCP and packet.total_length > packet.payload_offset))):
                return self._query(packet, payload, mark, token, uid, indev, hook)
            now = self.clock()
            process = self._sender(packet, uid, indev)
            if packet.proto == UDP and self._udp_decided:
                bits = self._recent_udp(key, now, process)
                if bits is not None:  # A and AAAA on one socket: the first's verdict
                    return marks.with_verdict(mark, bits)
            # Most addresses have no DNS names: a membership test, not the lookup and its list.
            names = self._dns_names(packet.dst, now) if packet.dst in self.names else ()
            decision = engine.assess(packet, process, names)
            if decision is None:  # the SYN too is the pending flow's (its options, TFO data)
                flow = self._track(PendingFlow(key, packet, names, process), now)
                return self._pending(flow, packet, payload, mark, token, now)
        except WireError:
            self.stats.unparseable += 1
            decision = engine.unparseable()
        except Exception:
            log.exception("engine error; fail-%s verdict", engine.settings.fail)
            self.stats.errors += 1
            decision = engine.failure()
        self.record(decision, packet, now, process)
        if packet is not None and packet.proto == UDP and now is not None:
            self._remember_udp(flow_key(packet), now, process, _bits(decision))
        elif packet is not None and packet.dport == DNS_PORT and now is not None:
            # a DNS-over-TCP handshake: its queries meet this verdict
            self._remember_dns_flow(flow_key(packet), now, _identity(process), _bits(decision))
        return marks.with_verdict(mark, _bits(decision))

    def record(self, decision: Decision, packet: Packet | None,
               now: float | None = None, process: ProcessInfo | None = None) -> None:
        self.stats.count(decision)
        when = self.clock() if now is None else now
        if self.defer_events:
            self._deferred.append(partial(self._record, decision, packet, when, process))
        else:
            self._record(decision, packet, when, process)

    def _record(self, decision: Decision, packet: Packet | None, when: float,
                process: ProcessInfo | None) -> None:
        """Build and write a flow's event: as a line when nothing reads it as a dict (an
        allow, in a log that takes lines, of no `nfguard exec` command's process)."""
        audit = self.audit
        if (packet is not None and decision.action != DENY and audit.takes_lines
                and not (process is not None and self.engine.transients)):
            try:
                audit.write_line(flow_line(decision, packet, when, process))
            except Exception:
                self.stats.errors += 1  # as in _write: never the verdict path's concern
                log.exception("cannot write audit event")
            return
        self._write(audit_event(decision, packet, when, process), process)

    def flush_events(self) -> None:
        """Build and write the deferred audit events (after their verdicts left), in the
        order they were recorded."""
        deferred = self._deferred
        if not deferred:
            return
        self._deferred = []
        for call in deferred:
            try:
                call()
            except Exception:
                self.stats.errors += 1
                log.exception("cannot build or record an audit event")

    def write(self, event: dict[str, Any], process: ProcessInfo | None = None) -> None:
        """Write an event built elsewhere (a DNS query's), after the verdicts if deferred."""
        if self.defer_events:
            self._deferred.append(partial(self._write, event, process))
        else:
            self._write(event, process)

    def _write(self, event: dict[str, Any], process: ProcessInfo | None) -> None:
        """Record an event of `process`'s: in the audit log, among the denies `status`
        shows, and in the flows of each `nfguard exec` command it belongs to."""
        if event["event"]["action"] == "deny":
            self.denies.add(event)
        try:
            self.audit.write(event)
        except Exception:
            # A full disk must not change verdicts; it is counted and logged.
            self.stats.errors += 1
            log.exception("cannot write audit event")
        transients = self.engine.transients
        if transients and process is not None:
            transients.record(process, event)

    def _sender(self, packet: Packet, uid: int | None, indev: int) -> ProcessInfo | None:
        """Who sent a new flow's first packet (a TCP socket still exists: the SYN waits in
        the queue, so even a short-lived client is still there; a UDP sender may have closed
        its socket already, and then `uid`, the kernel's word, is what is known). A
        forwarded flow's sender is known by its interface, and by its process when it
        lives in a network namespace of this host (a container); and by its original
        source address (a routed client's, match.source)."""
        attributor = self.attributor
        interface = _interface_name(indev) if indev else None
        if attributor is None or packet.proto not in (TCP, UDP):
            return (None if interface is None
                    else ProcessInfo(interface=interface, source=packet.src))
        if interface is not None:  # forward hook: the source before any SNAT
            return attributor.lookup_forwarded(
                packet.transport, packet.version, packet.src, packet.sport, packet.dst,
                packet.dport, interface, hash_exe=self.engine.matches_sha256,
            )._replace(source=packet.src)
        return attributor.lookup(TRANSPORT_NAMES[packet.proto], packet.version, packet.src,
                                 packet.sport, packet.dst, packet.dport,
                                 hash_exe=self.engine.matches_sha256, uid=uid)

    # -- DNS queries ---------------------------------------------------------------------
    def _query(self, packet: Packet, payload: bytes, mark: int, token: Any, uid: int | None,
               indev: int, hook: int) -> int | Held:
        """A query: its flow decided (once) like any flow, then its name judged. Over
        loopback to a local stub (loopback unfiltered), and from a forwarded client to a
        resolver on this host (LOCAL_IN: a gateway's), the name alone is judged: that flow
        ends here, and only the resolver's own queries leave."""
        engine = self.engine
        if packet.proto == TCP and packet.tcp_flags & _SYN:
            return marks.DROP  # data in a SYN (TCP Fast Open): sent again without, and read
        process = self._sender(packet, uid, indev)
        if hook != LOCAL_IN and (indev or engine.settings.filter_loopback
                                 or not _loopback(packet.dst)):
            bits = self._dns_flow(packet, process)
            if bits != marks.ALLOW:
                return marks.with_verdict(mark, bits)
        return self.queries.handle(engine, packet, payload, mark, token, process)

    def _dns_flow(self, packet: Packet, process: ProcessInfo | None) -> int:
        """The verdict bits of a flow to a DNS server, decided and recorded at its first
        query (or its SYN), then remembered while the policy stands."""
        key = flow_key(packet)
        known = self._dns_flows.get(key)
        identity = _identity(process)
        now = self.clock()
        if (known is not None and 0 <= known[0] - now <= DNS_FLOW_IDLE
                and known[1] is self.engine and known[2] == identity):
            self._remember_dns_flow(key, now, identity, known[3])
            return known[3]
        bits = self._recent_udp(key, now, process) if packet.proto == UDP else None
        if bits is None:
            names = self._dns_names(packet.dst, now) if packet.dst in self.names else ()
            decision = self.engine.decide(packet, process, names)
            self.record(decision, packet, now, process)
            bits = _bits(decision)
            if packet.proto == UDP:
                self._remember_udp(key, now, process, bits)
        self._remember_dns_flow(key, now, identity, bits)
        return bits

    def _remember_dns_flow(self, key: tuple, now: float, identity: Any, bits: int) -> None:
        self._dns_flows[key] = (now + DNS_FLOW_IDLE, self.engine, identity, bits)
        self._dns_flows.move_to_end(key)
        bound(self._dns_flows, MAX_DNS_FLOWS)

    # -- UDP flows decided at once -------------------------------------------------------
    def _recent_udp(self, key: tuple, now: float, process: ProcessInfo | None) -> int | None:
        """The verdict bits of a UDP flow the same sender had decided moments ago."""
        recent = self._udp_decided.get(key)
        if recent is None:
            return None
        until, sender, bits = recent
        if now > until:
            del self._udp_decided[key]
            return None
        return bits if sender == _identity(process) else None

    def _remember_udp(self, key: tuple, now: float, process: ProcessInfo | None,
                      bits: int) -> None:
        """A second datagram may already be queued as NEW, before the first's conntrack
        entry is confirmed (glibc's A and AAAA on one socket): it gets this verdict."""
        self._udp_decided[key] = (now + UDP_DECIDED_FOR, _identity(process), bits)
        self._udp_decided.move_to_end(key)
        bound(self._udp_decided, MAX_UDP_DECIDED)

    # -- pending flows -------------------------------------------------------------------
    def _dns_names(self, ip: str, now: float) -> tuple[tuple[str, str], ...]:
        """The address's DNS names now, in order, as the engine takes them (one tuple per
        set of names: the engine remembers decisions by them)."""
        found = self.names.names_for(ip, now)
        if not found:
            return ()
        pairs = self._dns_pairs.get(found)
        if pairs is None:
            pairs = self._dns_pairs.put(found, tuple((name, DNS) for name in sorted(found)))
        return pairs

    def _track(self, flow: PendingFlow, now: float) -> PendingFlow:
        """Remember a new pending flow; flows evicted while holding are decided now, and
        so is one it replaces (an earlier connection on the same tuple)."""
        replaced = self.flows.get(flow.key)
        if replaced is not None and replaced.decision is None and replaced.held:
            self._settle(replaced, replaced.give_up(Why.EVICTED), now)
        for old in self.flows.add(flow, now):
            self._settle(old, old.give_up(Why.EVICTED))
        self.stats.pending_flows += 1
        return flow

    def _pending(self, flow: PendingFlow, packet: Packet, payload: bytes, mark: int,
                 token: Any, now: float | None = None) -> int | Held:
        """A packet of a pending flow: its verdict if the flow is decided, else it is held
        (or passes as a bare segment) and the flow is decided once its outcome is known."""
        if flow.decision is not None:
            return marks.with_verdict(mark, _bits(flow.decision))
        if now is None:
            now = self.clock()
        if packet.proto == TCP:
            step = flow.segment(packet, payload, token, mark, now)
        else:
            step = flow.datagram(packet, payload, token, mark, now)
        if step is BARE:
            return marks.with_verdict(mark, marks.PENDING)
        if step is HELD:  # holders past the table's budget are decided now
            for old in self.flows.mark_holding(flow):
                self._settle(old, old.give_up(Why.EVICTED))
        else:
            self._settle(flow, step, now)
        return HOLD

    def _settle(self, flow: PendingFlow, outcome: Outcome, now: float | None = None) -> None:
        """Decide a pending flow, record its one audit event, release its held packets."""
        engine = self.engine
        if now is None:
            now = self.clock()
        packet = flow.packet
        try:
            if isinstance(outcome, Named):
                # The presented name asked once (its answer counts once in the cache's
                # figures); the cache is asked again only about its aliases, which a name
                # has only while it resolves there. The readers hand out names normalised.
                dst, presented = packet.dst, outcome.name
                hit = self.names.resolved(dst, presented, now)
                aliases = self.learner.aliases(dst, presented) if hit else ()
                decision = engine.decide_named(
                    packet, presented, outcome.evidence, flow.process,
                    resolved=self._resolved_at(now) if aliases else None, aliases=aliases,
                    resolves=hit)
            elif isinstance(outcome, Unreadable):
                decision = engine.decide_unreadable(packet, outcome.why, flow.process)
            else:  # clearly another protocol: the address and its DNS names, as at the SYN
                decision = engine.decide(packet, flow.process, flow.dns_names)
        except Exception:
            log.exception("engine error; fail-%s verdict", engine.settings.fail)
            self.stats.errors += 1
            decision = engine.failure()
        self.flows.settled(flow, decision)
        self.record(decision, packet, now, flow.process)
        bits = _bits(decision)
        for token, mark in flow.release():
            try:
                self.release(token, marks.with_verdict(mark, bits))
            except Exception:
                self.stats.errors += 1
                log.exception("cannot release a held packet")

    def _resolved_at(self, now: float) -> Callable[[str, str], bool]:
        """Whether a name resolves to an address at `now`, as the engine asks it."""
        names = self.names
        return lambda ip, name: names.resolved(ip, name, now)

    def sweep(self, now: float | None = None) -> int:
        """Decide the flows that have waited hello_timeout: those holding packets that long
        (their name is unreadable, or what was read of it when it was read), and those that
        opened that long ago and sent nothing to read. The latter's verdicts go into their
        ct marks at once (`set_verdicts`): their bare segments pass in the kernel, and no
        packet of theirs may come to carry the verdict."""
        now = self.clock() if now is None else now
        if self.one_trip is not None:
            self.one_trip.tend(self.engine.policies if self.settings.one_trip else None,
                               self.names.live)
        unseen = self._unseen_silent(now) if self.kernel_pending is not None else []
        if not self.flows.waiting and not unseen:
            self.flush_events()
            return 0
        timeout = self.settings.hello_timeout
        expired = self.flows.expired(now, timeout)
        silent = self.flows.silent(now, timeout)
        silent += [flow for flow in unseen if flow not in silent]
        for flow in (*expired, *silent):
            self.stats.hello_timeouts += 1
            self._settle(flow, flow.give_up(Why.HELLO_TIMEOUT))
        if silent:
            self.write_verdicts([(flow.key, _bits(flow.decision)) for flow in silent],
                                "decided as sending nothing")
        self.flush_events()
        return len(expired) + len(silent)

    def write_verdicts(self, verdicts: list[tuple[Hashable, int]], why: str) -> None:
        """Write verdicts into flows' ct marks (`set_verdicts`), for flows none of whose
        packets is here to carry one; a failure is counted and logged."""
        if self.set_verdicts is None:
            return
        try:
            self.set_verdicts(verdicts)
        except Exception:
            self.stats.errors += 1
            log.exception("cannot set the verdicts of flows %s", why)

    def _unseen_silent(self, now: float) -> list[PendingFlow]:
        """Flows the ruleset made pending at their SYN that have sent nothing the engine
        saw for hello_timeout: tracked now, to be decided like the engine's own silent
        flows. Looked at every UNSEEN_INTERVAL: a flow is decided within that of its
        hello_timeout (its bare segments pass meanwhile, nothing else)."""
        if now < self._next_unseen:
            return []
        self._next_unseen = now + UNSEEN_INTERVAL
        if self.one_trip is not None:
            if self.one_trip.mirror.pushed:
                self._listing_until = now + self.settings.hello_timeout + 2 * UNSEEN_INTERVAL
            elif not self._unseen and now > self._listing_until:
                return []  # the sets were empty long enough: no such flow can be waiting
        assert self.kernel_pending is not None
        try:
            listing = self.kernel_pending()
        except Exception:
            self.stats.errors += 1
            log.exception("cannot list the flows the ruleset made pending")
            return []
        known, previous = self.flows, self._unseen
        unseen: dict[Hashable, float] = {}
        for key, opened in listing:
            if key not in known:
                unseen[key] = min(opened, previous.get(key, opened))
        self._unseen = unseen
        timeout = self.settings.hello_timeout
        found = []
        for key, opened in unseen.items():
            if now - opened >= timeout:
                packet = _packet_of(key)
                names = self._dns_names(packet.dst, now) if packet.dst in self.names else ()
                flow = PendingFlow(key, packet, names, self._sender(packet, None, 0))
                found.append(self._track(flow, opened))
        for flow in found:
            del unseen[flow.key]
        return found


def _identity(process: ProcessInfo | None) -> Any:
    """What tells senders apart for the rules (the client memo's key)."""
    return None if process is None else match_key(process)


def _bits(decision: Decision) -> int:
    return marks.ALLOW if decision.verdict == ALLOW else marks.DENY


def _packet_of(key: Hashable) -> Packet:
    """A flow's opening as its key tells it (no bytes: for a flow the engine never saw)."""
    proto, src, sport, dst, dport = cast(tuple[int, str, int, str, int], key)
    address = ipaddress.ip_address(dst)
    return Packet(address.version, proto, src, dst, sport, dport, int(address), 0, 0, 0)


def _loopback(ip: str) -> bool:
    """Whether `ip` is a loopback address (127/8, ::1): a local stub resolver's."""
    return ip.startswith("127.") or ip == "::1"


def _interface_name(index: int) -> str:
    """The interface's name; one gone since the packet came in keeps a name by its index."""
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"#{index}"


def _no_release(_token: Any, _mark: int) -> None:
    raise RuntimeError("a held packet has no queue to be released to")
