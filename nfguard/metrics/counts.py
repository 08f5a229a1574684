"""The counters the verdict path keeps: plain ints and dicts, cheap to add to.

Nothing here runs per packet but `Stats.count` and `Latency.observe` (an int add and a
bisect); the exporter reads them only when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

from nfguard.engine import Decision


@dataclass
class Stats:
    packets: int = 0
    unparseable: int = 0
    errors: int = 0
    pending_flows: int = 0  # flows that waited for a presented name
    hello_timeouts: int = 0  # pending flows decided without a name after hello_timeout
    dns_answers: int = 0  # DNS answers learnt from
    dns_bindings: int = 0  # (address, name) bindings learnt
    dns_cut: int = 0  # answers cut by the queue's copy range (accepted, not learnt)
    dns_unparseable: int = 0  # answers that could not be parsed (accepted, not learnt)
    dns_untrusted: int = 0  # answers from servers not in [names] resolvers (accepted, not learnt)
    dns_out_of_order: int = 0  # DNS-over-TCP segments dropped for the server to resend
    dns_queries: int = 0  # DNS queries judged by their name
    dns_queries_refused: int = 0  # queries that did not leave (a refusal went to the client)
    dns_queries_unparseable: int = 0  # query packets that could not be read (dropped)
    dns_streams_cut: int = 0  # DNS-over-TCP query streams cut when no longer followed
    # DNS bindings of names to internal addresses, by kind (nfguard.policy.internal), and
    # the last one ("name -> address (kind)")
    dns_private: Counter[str] = field(default_factory=Counter)
    dns_private_last: str = ""
    reloads: int = 0  # reloads that swapped in a new policy
    reload_failures: int = 0  # reloads rejected; the running policy stayed
    policy_loaded_at: float = 0.0  # wall-clock time the running policy was loaded
    policy_rules: int = 0
    decisions: Counter[tuple[str, str, str, str, str]] = field(default_factory=Counter)

    def count(self, decision: Decision) -> None:
        self.decisions[(decision.action, decision.verdict, decision.client or "",
                        decision.rule or "", decision.evidence)] += 1


# Upper bounds of the verdict latency buckets, in nanoseconds (10 µs .. 1 s).
LATENCY_BOUNDS_NS = (10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
                     5_000_000, 10_000_000, 25_000_000, 100_000_000, 1_000_000_000)


class Latency:
    """A histogram of plain ints: the time the engine took to answer a queued packet."""

    __slots__ = ("counts", "total_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS_NS) + 1)  # the last one is +Inf
        self.total_ns = 0

    def observe(self, ns: int) -> None:
        self.counts[bisect_left(LATENCY_BOUNDS_NS, ns)] += 1
        self.total_ns += ns

    def quantile(self, q: float) -> float | None:
        """The upper bound (seconds) of the bucket holding quantile `q`; None before any
        packet, inf past the last bound."""
        counts = list(self.counts)
        total = sum(counts)
        if not total:
            return None
        running = 0
        for bound, count in zip((*LATENCY_BOUNDS_NS, None), counts, strict=True):
            running += count
            if running >= q * total:
                return float("inf") if bound is None else bound / 1e9
        return float("inf")

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (le, count) pairs in seconds, as Prometheus histograms want them."""
        counts = list(self.counts)  # one consistent copy (the packet thread keeps adding)
        out, running = [], 0
        for bound, count in zip((*LATENCY_BOUNDS_NS, None), counts, strict=True):
            running += count
            out.append(("+Inf" if bound is None else repr(bound / 1e9), running))
        return out
