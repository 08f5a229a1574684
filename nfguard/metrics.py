"""Counters kept on the verdict path as plain ints and dicts (cheap), exported to
Prometheus by a collector that reads them only when scraped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from nfguard.config import parse_listen
from nfguard.engine import Decision

log = logging.getLogger(__name__)


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
    dns_out_of_order: int = 0  # DNS-over-TCP segments dropped for the server to resend
    decisions: Counter[tuple[str, str, str, str, str]] = field(default_factory=Counter)

    def count(self, decision: Decision) -> None:
        self.decisions[(decision.action, decision.verdict, decision.client or "",
                        decision.rule or "", decision.evidence)] += 1


class StatsCollector:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily

        decisions = CounterMetricFamily(
            "nfguard_decisions", "Flows decided, by policy decision and what the kernel was told",
            labels=["action", "verdict", "client", "rule", "evidence"],
        )
        for labels, value in dict(self.stats.decisions).items():
            decisions.add_metric(list(labels), value)
        yield decisions
        yield CounterMetricFamily("nfguard_packets", "Packets the engine received",
                                  value=self.stats.packets)
        yield CounterMetricFamily("nfguard_unparseable_packets",
                                  "Packets that could not be parsed (denied in enforce mode)",
                                  value=self.stats.unparseable)
        yield CounterMetricFamily("nfguard_engine_errors",
                                  "Internal errors turned into the fail-mode verdict",
                                  value=self.stats.errors)
        for name, help_text in _NAME_COUNTERS:
            yield CounterMetricFamily(f"nfguard_{name}", help_text,
                                      value=getattr(self.stats, name))


_NAME_COUNTERS = (
    ("pending_flows", "Flows that waited for the name the client presents"),
    ("hello_timeouts", "Pending flows decided without a name after names.hello_timeout"),
    ("dns_answers", "DNS answers whose names were learnt"),
    ("dns_bindings", "Address-name bindings learnt from DNS answers"),
    ("dns_cut", "DNS answers cut by the queue copy range (accepted without learning)"),
    ("dns_unparseable", "DNS answers that could not be parsed (accepted without learning)"),
    ("dns_out_of_order", "DNS-over-TCP segments dropped out of order (the server resends)"),
)


def serve(listen: str, stats: Stats) -> object | None:
    """Start the exporter thread; returns the server (to shut down) or None when disabled."""
    if not listen:
        return None
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))  # type: ignore[arg-type]
    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s/metrics", listen)
    return server
