"""The verdict path's counters: the plain-int latency histogram."""

from __future__ import annotations

from nfguard.metrics.counts import LATENCY_BOUNDS_NS, Latency


def test_latency_buckets_are_cumulative_and_sum_in_seconds() -> None:
    latency = Latency()
    for ns in (5_000, 10_000, 10_001, 2_000_000, 5_000_000_000):
        latency.observe(ns)
    buckets = dict(latency.buckets())
    assert buckets["1e-05"] == 2, "a bound includes its own value (le)"
    assert buckets["2.5e-05"] == 3
    assert buckets["0.0025"] == 4
    assert buckets["1.0"] == 4
    assert buckets["+Inf"] == 5
    assert len(buckets) == len(LATENCY_BOUNDS_NS) + 1
    assert latency.total_ns == 5_000 + 10_000 + 10_001 + 2_000_000 + 5_000_000_000


def test_latency_quantiles() -> None:
    latency = Latency()
    assert latency.quantile(0.5) is None
    for _ in range(98):
        latency.observe(30_000)
    latency.observe(400_000)
    latency.observe(3_000_000_000)
    assert latency.quantile(0.5) == 50e-6
    assert latency.quantile(0.99) == 500e-6
    assert latency.quantile(1.0) == float("inf")
