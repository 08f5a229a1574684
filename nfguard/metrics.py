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
