"""Policy scale and DNS answers per second: pure user-space figures (no root, no kernel).

A policy of N rules (names, wildcards, CIDRs, ports; see `policies.body_rules`) is loaded
the way the daemon loads it (read the policy directory, parse, compile), its memory
measured, and flows decided by address, by DNS-derived name and by a presented SNI. DNS
answers (CNAME + A) go through the pipeline's answer path (parse + learn).

    .venv/bin/python -m tests.bench --parts scale dns
"""

from __future__ import annotations

import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from scapy.all import DNS, DNSQR, DNSRR, IP, TCP, UDP, raw

from nfguard import marks
from nfguard.audit import AuditLog
from nfguard.config import EngineConfig, NamesConfig
from nfguard.engine import Engine
from nfguard.metrics.counts import Stats
from nfguard.pipeline import LOCAL_IN, Pipeline
from nfguard.policy.build import compile_policy_dir
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.wire.ip import parse_packet
from tests.bench.policies import BODY, body_name, scale_policy
from tests.bench.report import Figure

LOAD_TARGET_S = 2.0  # for 100k rules


def per_call_us(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(median, p99) of one call, in µs."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000




def policy_scale(size: int, rounds: int = 20000) -> Figure:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "scale.toml").write_text(scale_policy(size))
        start = time.perf_counter()
        compiled = compile_policy_dir(Path(tmp))
        load_s = time.perf_counter() - start
        assert compiled.source.rule_count == size + 1
        del compiled
        tracemalloc.start()  # a second load, for memory (tracemalloc slows it down)
        compiled = compile_policy_dir(Path(tmp))
        memory = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
    engine = Engine(EngineConfig(), compiled)
    syn = parse_packet(raw(IP(src="198.18.0.1", dst="203.0.113.9") /
                           TCP(sport=40000, dport=443, flags="S")))
    middle = size // 2 - size // 2 % 4 + 1  # an exact-name rule halfway down the body
    name = body_name(middle)
    expected = f"{BODY}/r{middle}"
    assert engine.decide(syn, None, ((name, "dns"),)).rule == expected
    assert engine.decide_named(syn, name, "sni", resolved=lambda ip, n: True).rule == expected
    # Every call to a new address: the engine remembers answers per destination, and this
    # measures the rule lookup itself (a repeated destination costs a dict probe).
    fresh = [syn._replace(dst_int=syn.dst_int + i) for i in range(1, 3 * rounds + 1)]
    flows = iter(fresh)
    by_address = per_call_us(lambda: engine.decide(next(flows)), rounds)
    by_dns = per_call_us(lambda: engine.decide(next(flows), None, ((name, "dns"),)), rounds)
    by_sni = per_call_us(lambda: engine.decide_named(
        next(flows), name, "sni", resolved=lambda ip, n: True), rounds)
    remembered = per_call_us(lambda: engine.decide(syn, None, ((name, "dns"),)), rounds)
    big = size >= 100_000
    return Figure(
        f"Policy of {size:,} rules: load (read, parse, compile), memory; decision µs "
        "median/p99 by address, DNS name, SNI (new destinations), and remembered",
        f"{load_s:.2f} s, {memory:.0f} MiB; {by_address[0]:.1f}/{by_address[1]:.1f}, "
        f"{by_dns[0]:.1f}/{by_dns[1]:.1f}, {by_sni[0]:.1f}/{by_sni[1]:.1f}, "
        f"{remembered[0]:.1f}/{remembered[1]:.1f}",
        f"load < {LOAD_TARGET_S:g} s" if big else "",
        (load_s < LOAD_TARGET_S) if big else None,
    )


def dns_answers(count: int = 20000) -> Figure:
    engine = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([])))
    pipeline = Pipeline(engine, AuditLog("/dev/null"), Stats(),
                        settings=NamesConfig(resolvers=("198.18.0.2/32",)))
    answers = []
    for i in range(count):
        name = f"host{i}.cdn.example."
        answer = [DNSRR(rrname=f"www{i}.example.", type="CNAME", rdata=name, ttl=300),
                  DNSRR(rrname=name, type="A", rdata=f"198.18.{i // 250 % 250}.{i % 250 + 1}",
                        ttl=60)]
        answers.append(raw(IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=53, dport=5353) /
                           DNS(id=i % 65536, qr=1, qd=DNSQR(qname=f"www{i}.example."),
                               an=answer)))
    start = time.perf_counter()
    for payload in answers:
        pipeline.handle(payload, marks.ANSWER, LOCAL_IN)
    elapsed = time.perf_counter() - start
    learnt = len(pipeline.names)
    assert learnt == 2 * count, f"only {learnt} names learnt"
    return Figure("DNS answers learnt (CNAME + A, parse + learn), per second",
                  f"{count / elapsed:,.0f}/s ({elapsed / count * 1e6:.1f} µs each)")
