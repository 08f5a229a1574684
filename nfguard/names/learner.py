"""DNS answers read before they are accepted: what the host's resolvers say teaches names.

An answer (source port 53 in the reply direction, to this host or forwarded to a client,
marked ANSWER) is learnt, then accepted, so no client can connect before the engine knows
the name. Answers over TCP are read from the server's stream in order (a segment ahead of
the next byte is dropped: the server sends it again); one answer binding several names to
an address (a CNAME chain) is remembered, so a client presenting the alias is known to go
to its target.
Only the trusted resolvers' answers teach (resolvers.TrustedServers).
Bindings of names to internal addresses (nfguard.policy.internal) are counted here, by kind:
a public name that suddenly answers with an inside address is what DNS rebinding looks
like.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from nfguard import marks
from nfguard.config import NamesConfig
from nfguard.metrics.counts import Stats
from nfguard.names.cache import NameCache
from nfguard.names.peers import Peers
from nfguard.names.resolvers import TrustedServers
from nfguard.names.streams import SYN, bound, closing, flow_key, in_order
from nfguard.policy.internal import PUBLIC, Internal, classify_text
from nfguard.wire.dns import DNS_PORT, TcpDnsStream, parse_response
from nfguard.wire.errors import WireError
from nfguard.wire.ip import TCP, UDP, Packet, parse_packet

log = logging.getLogger(__name__)

MAX_DNS_STREAMS = 4096  # DNS-over-TCP answer streams followed at once (LRU)
MAX_CHAINS = 65536  # (address, name) CNAME chain entries kept (LRU)
MAX_ORIGINS = 32768  # (address, name) pairs whose answer `nfguard names` can tell (LRU)


class Origin(NamedTuple):
    """The DNS answer that taught a binding, for `nfguard names`."""

    resolver: str  # the server that answered
    client: str  # "address:port": the socket the answer went to (the one that asked)
    transport: str  # "udp" | "tcp"
    learnt_at: float
    question: str | None


# Bindings another engine worker learnt (engine.workers > 1): it holds their answer.
FROM_PEER = Origin("another engine worker", "?", "?", 0.0, None)


def make_name_cache(settings: NamesConfig) -> NameCache:
    cache = NameCache()
    configure_name_cache(cache, settings)
    return cache


def configure_name_cache(cache: NameCache, settings: NamesConfig) -> None:
    """The config's [names] limits, at start and on reload (min_ttl capped at max_ttl)."""
    cache.configure(max_entries=settings.max_entries, grace=settings.grace,
                    min_ttl=min(settings.min_ttl, cache.max_ttl))


class Learner:
    """Reads DNS answers into the name cache (and tells the other workers)."""

    def __init__(self, names: NameCache, trusted: TrustedServers, stats: Stats,
                 clock: Callable[[], float] = time.time, peers: Peers | None = None,
                 internal: Callable[[str], Internal] = classify_text) -> None:
        self.names = names
        self.trusted = trusted
        self.stats = stats
        self.clock = clock
        self.peers = peers  # the other workers, with engine.workers > 1
        self.internal = internal  # the kind of an address (nfguard.hostnets knows the host's)
        # Told of every binding learnt, as (ip, name, expiry) (the one-trip sets).
        self.listener: Callable[[list[tuple[str, str, float]], float], None] | None = None
        self._streams: OrderedDict[tuple, list[Any]] = OrderedDict()
        # (address, name) -> the other names one answer bound to that address with it (a
        # CNAME chain): a client presenting alias.test, which the host resolved through
        # "alias.test CNAME allowed.test", is going to allowed.test. Consulted only while
        # the presented name itself resolves to the address (NameCache.resolved).
        self.chains: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()
        # (address, name) -> the answer that last taught it, and the TTL it gave
        self.origins: OrderedDict[tuple[str, str], tuple[Origin, int]] = OrderedDict()

    def aliases(self, ip: str, name: str) -> tuple[str, ...]:
        """The names one answer bound to `ip` together with `name`."""
        return self.chains.get((ip, name), ())

    def answer(self, payload: bytes, mark: int) -> int:
        """Learn the names of a DNS answer, then accept it (never half-parsed)."""
        accept = marks.with_verdict(mark, marks.ALLOW)
        try:
            packet = parse_packet(payload)
            if packet.sport != DNS_PORT or packet.proto not in (TCP, UDP):
                return accept
            if not self.trusted.trusts(packet.src):
                self.stats.dns_untrusted += 1
                return accept
            if packet.total_length > len(payload):
                self.stats.dns_cut += 1
                log.warning("DNS answer from %s cut by the queue's copy range (%d of %d "
                            "bytes): accepted without learning its names", packet.src,
                            len(payload), packet.total_length)
                if packet.proto == TCP:
                    self._streams.pop(flow_key(packet), None)  # framing is lost
                return accept
            body = payload[packet.payload_offset:packet.total_length]
            if packet.proto == UDP:
                self._learn(body, packet)
                return accept
            return self._tcp_answer(packet, body, mark, accept)
        except WireError:
            self.stats.dns_unparseable += 1
            return accept
        except Exception:
            self.stats.errors += 1
            log.exception("error reading a DNS answer; accepted")
            return accept

    def _tcp_answer(self, packet: Packet, body: bytes, mark: int, accept: int) -> int:
        key = flow_key(packet)
        streams = self._streams
        taken = in_order(streams, key, packet, body, MAX_DNS_STREAMS, TcpDnsStream)
        if taken is None:  # ahead of the next byte
            self.stats.dns_out_of_order += 1
            return marks.with_verdict(mark, marks.DENY)  # dropped: the server resends
        state, new = taken
        if new and state is not None:
            try:
                messages = state[1].feed(new)
            except WireError:
                self.stats.dns_unparseable += 1
                streams.pop(key, None)  # framing lost; nothing more is learnt
                return accept
            for message in messages:
                try:
                    self._learn(message, packet)
                except WireError:
                    self.stats.dns_unparseable += 1
        if closing(packet) and not packet.tcp_flags & SYN:
            streams.pop(key, None)
        return accept

    def _learn(self, message: bytes, packet: Packet) -> None:
        response = parse_response(message)
        now = self.clock()
        bindings = [(b.ip, b.name, b.ttl) for b in response.bindings]
        transport = "udp" if packet.proto == UDP else "tcp"
        self.learn(now, bindings, Origin(packet.src, f"{packet.dst}:{packet.dport}", transport,
                                         now, response.question))
        if self.peers is not None and bindings:
            self.peers.publish(now, bindings)  # before the answer is accepted
        stats = self.stats
        stats.dns_answers += 1
        stats.dns_bindings += len(bindings)  # here, not in learn: workers' sums stay true
        internal = self.internal
        for ip, name, _ttl in bindings:
            kind = internal(ip)
            if kind is not PUBLIC:
                stats.dns_private[kind] += 1
                stats.dns_private_last = f"{name} -> {ip} ({kind})"

    def learn(self, now: float, bindings: list[tuple[str, str, int]],
              origin: Origin = FROM_PEER) -> None:
        """Bind names to addresses (one DNS answer's, or what another worker learnt)."""
        learn = self.names.learn
        origins = self.origins
        by_ip: dict[str, list[str]] = {}
        for ip, name, ttl in bindings:
            learn(ip, name, ttl, now)
            by_ip.setdefault(ip, []).append(name)  # already normalised
            origins[(ip, name)] = (origin, ttl)
            origins.move_to_end((ip, name))
        if len(origins) > MAX_ORIGINS:
            bound(origins, MAX_ORIGINS)
        chains = self.chains
        for ip, group in by_ip.items():
            if len(group) > 1:
                for name in group:
                    chains[(ip, name)] = tuple(other for other in group if other != name)
                    chains.move_to_end((ip, name))
        bound(chains, MAX_CHAINS)
        listener = self.listener
        if listener is not None:
            expiry = self.names.expiry
            held = [(ip, name, expiry(ip, name) or 0.0) for ip, name, _ttl in bindings]
            listener(held, now)

    def receive_peers(self) -> int:
        """Learn what other workers' DNS answers taught; call before each batch of packets."""
        if self.peers is None:
            return 0
        messages = self.peers.receive()
        for learnt_at, bindings in messages:
            self.learn(learnt_at, bindings)
        return len(messages)
