"""Per-flow decision cost at scale, policy load time, and DNS answers learnt per second.

Pure user-space figures (no root, no kernel): a policy with N name patterns and N CIDRs is
compiled, then flows are decided by address, by DNS-derived names and by a presented SNI;
and scapy-built DNS answers go through the pipeline's answer path (parse + learn).

    .venv/bin/python -m tests.bench.bench_policy_scale [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import tracemalloc

from scapy.all import DNS, DNSQR, DNSRR, IP, TCP, UDP, raw

from nfguard.audit import AuditLog
from nfguard.config import EngineConfig
from nfguard.engine import Engine
from nfguard.metrics import Stats
from nfguard.pipeline import LOCAL_IN, Pipeline
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.wire.ip import parse_packet


def policy_text(size: int, rng: random.Random) -> str:
    names = [f'"{"*." if i % 3 == 0 else ""}h{i}.d{i % 997}.example"' for i in range(size)]
    cidrs = [f'"{rng.getrandbits(8) % 223 + 1}.{rng.getrandbits(8)}.{rng.getrandbits(8)}.0/24"'
             for _ in range(size)]
    return (
        '[[client]]\nname = "everyone"\npolicies = ["big", "rest"]\n\n'
        '[[policy]]\nname = "big"\n\n'
        f'[[policy.rule]]\nname = "names"\naction = "allow"\nto = [{", ".join(names)}]\n'
        'ports = [443]\nproto = "tcp"\n\n'
        f'[[policy.rule]]\nname = "nets"\naction = "deny"\nto = [{", ".join(cidrs)}]\n\n'
        '[[policy]]\nname = "rest"\n\n[[policy.rule]]\naction = "deny"\n'
    )


def per_call_us(fn, rounds: int = 20000) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def bench_size(size: int) -> None:
    rng = random.Random(size)
    text = policy_text(size, rng)
    start = time.perf_counter()
    compiled = CompiledPolicySet(parse_policy_texts([("scale.toml", text)]))
    load_s = time.perf_counter() - start
    del compiled
    tracemalloc.start()  # a second load, measured for memory (tracemalloc slows it down)
    compiled = CompiledPolicySet(parse_policy_texts([("scale.toml", text)]))
    memory = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    engine = Engine(EngineConfig(), compiled)
    syn = parse_packet(raw(IP(src="198.18.0.1", dst="203.0.113.9") /
                           TCP(sport=40000, dport=443, flags="S")))
    dns_names = (("h4.d4.example", "dns"),)
    by_address = per_call_us(lambda: engine.decide(syn))
    by_dns = per_call_us(lambda: engine.decide(syn, None, dns_names))
    by_sni = per_call_us(lambda: engine.decide_named(
        syn, "x.h3.d3.example", "sni", resolved=lambda ip, name: True))
    print(f"{size:>7} names + {size:>7} CIDRs: load {load_s:6.2f} s, {memory:6.1f} MiB; "
          f"decide µs median/p99: address {by_address[0]:.1f}/{by_address[1]:.1f}, "
          f"dns name {by_dns[0]:.1f}/{by_dns[1]:.1f}, sni {by_sni[0]:.1f}/{by_sni[1]:.1f}")


def bench_dns_answers(count: int = 20000) -> None:
    engine = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([])))
    pipeline = Pipeline(engine, AuditLog("/dev/null"), Stats())
    answers = []
    for i in range(count):
        name = f"host{i}.cdn.example."
        answer = [DNSRR(rrname=f"www{i}.example.", type="CNAME", rdata=name, ttl=300),
                  DNSRR(rrname=name, type="A", rdata=f"198.18.{i // 250 % 250}.{i % 250 + 1}",
                        ttl=60)]
        answers.append(raw(IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=53, dport=5353) /
                           DNS(id=i, qr=1, qd=DNSQR(qname=f"www{i}.example."), an=answer)))
    start = time.perf_counter()
    for payload in answers:
        pipeline.handle(payload, 0, LOCAL_IN)
    elapsed = time.perf_counter() - start
    learnt = len(pipeline.names)
    assert learnt == 2 * count, f"only {learnt} names learnt"
    print(f"DNS answers (CNAME + A) through the answer path: {count / elapsed:,.0f}/s "
          f"({elapsed / count * 1e6:.1f} µs each); (address, name) pairs cached: {learnt}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    args = parser.parse_args()
    for size in args.sizes:
        bench_size(size)
    bench_dns_answers()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
