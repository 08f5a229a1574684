"""The benchmark suite: every part, one markdown table.

    sudo .venv/bin/python -m tests.bench                       # everything, a few minutes
    sudo .venv/bin/python -m tests.bench --parts scale memory  # some parts
    ./bootstrap.sh bench [options]                             # installs what it needs first

Parts: connections (new TCP connections/s: no filter, a bare NetfilterQueue loop, nfguard,
OpenSnitch when installed), workers (engine.workers 1 against 2), latency (connect and
request time added), reload (a 100k-rule policy swapped under load), queries (DNS queries
judged per second and the query time added, dnsmasq answering), gateway (forwarded new
connections/s through a gateway running nfguard, clients by source), scale (policy load, memory
and decision cost at 1k-100k rules), dns (DNS answers learnt per second), memory (engine
memory over a million flows), instructions (callgrind's count of the engine's own work
per flow decided by name, valgrind needed), exec (what `nfguard exec` adds to starting a
command and to 1,000 connections). The lab parts need root, nginx, wrk and dnsmasq; the
others are pure user space.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from tests.bench.report import Figure, conditions, table

LAB_PARTS = ("connections", "workers", "latency", "reload", "queries", "gateway", "exec")
PURE_PARTS = ("scale", "dns", "memory", "instructions")
PARTS = LAB_PARTS + PURE_PARTS


def run(args: argparse.Namespace) -> list[Figure]:
    figures: list[Figure] = []
    parts = [p for p in PARTS if p in args.parts]  # the table's order
    lab_parts = [p for p in parts if p in LAB_PARTS]
    if lab_parts and os.geteuid() != 0:
        print("the lab parts need root; skipping " + ", ".join(lab_parts), file=sys.stderr)
        figures += [Figure(part, "skipped: needs root") for part in lab_parts]
    elif lab_parts:
        from tests.bench import bench_connections as lab_bench

        web_parts = [p for p in lab_parts if p not in ("queries", "gateway", "exec")]
        with lab_bench.web_lab() if web_parts else contextlib.nullcontext() as lab:
            for part in web_parts:
                started = time.monotonic()
                if part == "connections":
                    figures += lab_bench.connection_rates(
                        lab, args.seconds, args.body, args.rounds,
                        with_opensnitch=not args.no_opensnitch)
                elif part == "workers":
                    figures += lab_bench.workers_rates(lab, args.seconds, args.body)
                elif part == "latency":
                    figures += lab_bench.connect_latency(lab, args.connects, args.body)
                else:
                    figures += lab_bench.reload_under_load(lab, args.reload_rules)
                progress(part, started)
        if "queries" in lab_parts:
            from tests.bench.bench_dns import query_rates

            started = time.monotonic()
            figures += query_rates(args.queries, args.query_latency, args.body)
            progress("queries", started)
        if "gateway" in lab_parts:
            from tests.bench.bench_gateway import gateway_rates

            started = time.monotonic()
            figures += gateway_rates(args.seconds, args.gateway_clients)
            progress("gateway", started)
        if "exec" in lab_parts:
            from tests.bench.bench_exec import exec_costs

            started = time.monotonic()
            figures += exec_costs()
            progress("exec", started)
    if "scale" in parts:
        from tests.bench.bench_policy_scale import policy_scale

        for size in args.sizes:
            started = time.monotonic()
            figures.append(policy_scale(size))
            progress(f"scale {size}", started)
    if "dns" in parts:
        from tests.bench.bench_policy_scale import dns_answers

        started = time.monotonic()
        figures.append(dns_answers(args.dns_answers))
        progress("dns", started)
    if "memory" in parts:
        from tests.bench.bench_memory import flow_memory

        started = time.monotonic()
        # In a fresh interpreter: what the other parts left in this one would hide the
        # engine's own memory.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            figures.append(pool.submit(flow_memory, args.flows).result())
        progress("memory", started)
    if "instructions" in parts:
        from tests.bench.bench_pipeline import instructions

        started = time.monotonic()
        figures.append(instructions())
        progress("instructions", started)
    return figures


def progress(part: str, started: float) -> None:
    print(f"bench: {part} done in {time.monotonic() - started:.0f} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seconds", type=int, default=10, help="per connection-rate run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="connection-rate runs per configuration (the median is shown)")
    parser.add_argument("--body", type=int, default=1000,
                        help="generated rules ahead of the server's rule in the lab parts")
    parser.add_argument("--connects", type=int, default=2000, help="latency samples")
    parser.add_argument("--reload-rules", type=int, default=100_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--dns-answers", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=20_000, help="DNS queries per rate run")
    parser.add_argument("--query-latency", type=int, default=2_000,
                        help="sequential DNS queries timed")
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--gateway-clients", type=int, default=10_000,
                        help="client networks (match.source) of the gateway part")
    parser.add_argument("--no-opensnitch", action="store_true",
                        help="leave OpenSnitch out even when it is installed")
    args = parser.parse_args(argv)
    header = conditions()
    figures = run(args)
    print(f"\nMeasured {header}.\n")
    print(table(figures))
    failed = [f.measure for f in figures if f.met is False]
    if failed:
        print(f"\n{len(failed)} target(s) not met.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
