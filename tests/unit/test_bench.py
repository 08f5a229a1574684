"""The benchmark suite stays runnable: its pure parts at tiny sizes, and its parsers."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections import Counter

import pytest

from nfguard import marks
from nfguard.audit import AuditLog
from nfguard.config import EngineConfig, NamesConfig
from nfguard.engine import Engine
from nfguard.metrics.counts import Stats
from nfguard.pipeline import LOCAL_IN, Pipeline
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.resolve import QueryJudge
from nfguard.wire.dns import parse_response
from nfguard.wire.ip import parse_packet
from tests.bench import __main__ as suite
from tests.bench.bench_connections import full_policy, parse_wrk, verified
from tests.bench.bench_dns import (
    REFUSED_ZONE,
    ZONE,
    dns_policy,
    judged_queries,
    querier_argv,
    query_figures,
    rate,
)
from tests.bench.bench_memory import dns_answer, ipv4, tcp
from tests.bench.policies import scale_policy
from tests.bench.report import Figure, percentile, table

WRK_OUTPUT = """Running 3s test @ http://198.18.1.1/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   240.35us  671.88us  10.32ms   93.98%
    Req/Sec     2.16k   655.20     3.35k    61.67%
  12881 requests in 3.00s, 1.78MB read
  Socket errors: connect 0, read 3, write 0, timeout 0
Requests/sec:   4287.04
Transfer/sec:    607.05KB
"""


def test_pure_parts_run_and_print_one_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert suite.main(["--parts", "scale", "dns", "memory", "--sizes", "100",
                       "--dns-answers", "50", "--flows", "2000"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0] == "| Measure | Result | Target |"
    assert len(rows) == 1 + 1 + 3  # header, separator, one figure per part
    assert "Policy of 100 rules" in out and "DNS answers" in out and "2,000:" in out


def test_generated_packets_parse_as_the_engine_reads_them() -> None:
    syn = parse_packet(ipv4(6, 0xC6120001, 0x0A000005, tcp(1234, 443, 7, 0x02)))
    assert (syn.dst, syn.sport, syn.dport, syn.tcp_seq, syn.tcp_flags) == \
        ("10.0.0.5", 1234, 443, 7, 0x02)
    raw = ipv4(17, 0xC6120002, 0xC6120001, dns_answer(9, "n1.mem.example", 0x0A000001))
    packet = parse_packet(raw)
    bindings = parse_response(raw[packet.payload_offset:]).bindings
    assert [(b.ip, b.name) for b in bindings] == [("10.0.0.1", "n1.mem.example")]


def test_generated_policies_load() -> None:
    assert parse_policy_texts([("s.toml", scale_policy(8))]).rule_count == 9
    policies = parse_policy_texts([("f.toml", full_policy(8))])
    assert [c.name for c in policies.clients] == ["wrk", "probe", "resolver"]


def test_dns_answers_are_learnt_by_the_pipeline() -> None:
    pipeline = Pipeline(Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([]))),
                        AuditLog("/dev/null"), Stats(),
                        settings=NamesConfig(resolvers=("0.0.0.1",)))
    pipeline.handle(ipv4(17, 1, 2, dns_answer(1, "a.example", 0x0A000001)), marks.ANSWER, LOCAL_IN)
    assert pipeline.names.names_for("10.0.0.1", pipeline.clock()) == {"a.example"}


def test_wrk_output_and_audit_verification() -> None:
    run = parse_wrk(WRK_OUTPUT)
    assert (run.rate, run.requests) == (4287.04, 12881)
    assert run.errors == "connect 0, read 3, write 0, timeout 0"
    with pytest.raises(RuntimeError):
        parse_wrk("wrk: connection refused")
    decided = Counter({("wrk", "web/server", "allow"): 100, ("resolver", "-", "deny"): 3})
    assert verified(decided, "wrk", 100, in_flight=3)[0]
    assert not verified(decided, "wrk", 100, in_flight=2)[0]
    assert not verified(decided, "wrk", 101, in_flight=3)[0]
    assert not verified(decided, "probe", 1)[0]


def test_table_and_percentile() -> None:
    text = table([Figure("a", "1"), Figure("b", "2", "< 3", True), Figure("c", "4", "< 3",
                                                                           False)])
    assert text.splitlines()[2:] == ["| a | 1 |  |", "| b | 2 | < 3 (met) |",
                                     "| c | 4 | < 3 (**not met**) |"]
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(range(100)), 0.99) == 99


# ---------------------------------------------------------------- DNS queries (bench_dns)


def test_the_dns_bench_policy_lets_the_querier_resolve_its_zone_only() -> None:
    policies = CompiledPolicySet(parse_policy_texts(
        [("q.toml", dns_policy(8, "/usr/bin/python3.11"))]))
    querier = policies.clients[0]
    assert querier.name == "querier"
    judge = QueryJudge(policies)
    assert judge.decide(querier, f"q17.{ZONE}").action == "allow"
    assert judge.decide(querier, f"q17.{REFUSED_ZONE}").action == "deny"
    assert judge.decide(policies.clients[1], f"q17.{ZONE}").action == "deny"


def answering_server(sock: socket.socket, answers: int, rcode: int) -> None:
    """Answers the first `answers` queries on `sock` with their id and `rcode`."""
    for _ in range(answers):
        data, peer = sock.recvfrom(512)
        sock.sendto(data[:2] + bytes([0x81, 0x80 | rcode]) + data[4:], peer)


@pytest.mark.parametrize("sockets", [1, 2, 0])
def test_the_querier_times_each_answer_and_counts_the_lost(sockets: int) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    thread = threading.Thread(target=answering_server, args=(server, 5, 5), daemon=True)
    thread.start()
    try:
        argv = querier_argv(6, 2, sockets, ZONE, "127.0.0.1", port)
        out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True,
                                        timeout=30).stdout)
    finally:
        thread.join(timeout=5)
        server.close()
    # five answered (REFUSED, rcode 5), the sixth lost after a second without an answer
    assert len(out["rtt"]) == 5 and out["lost"] == 1
    assert out["rcodes"] == {"5": 5}
    assert all(0 < t < 2 for t in out["rtt"])
    assert rate(out) > 0


def run_of(rtts_ms: list[float], seconds: float = 1.0, lost: int = 0) -> dict:
    return {"rtt": [t / 1e3 for t in rtts_ms], "rcodes": {"0": len(rtts_ms)}, "lost": lost,
            "seconds": seconds}


def test_judged_queries_are_the_packets_besides_answers_and_first_datagrams() -> None:
    assert judged_queries(queued=20_000 + 20_000 + 128, answered=20_000, sockets=128) == 20_000
    assert judged_queries(queued=20_000 + 128, answered=20_000, sockets=128) == 0
    assert judged_queries(queued=10, answered=20_000, sockets=128) == 0


def test_query_figures_judge_the_goal_only_when_every_query_reached_the_engine() -> None:
    plain = run_of([0.1] * 100, 0.01)
    judged = run_of([0.15] * 100, 0.02)
    fast, slow = run_of([0.10] * 99 + [0.2]), run_of([0.13] * 99 + [0.3])
    refused = {"rtt": [0.00005] * 10, "rcodes": {"5": 10}, "lost": 0, "seconds": 0.01}
    figures = query_figures(plain, judged, fast, slow, fast, slow, refused, 100, 100, plain)
    assert figures[0].result.startswith("no filter 10,000/s (again after: 10,000/s); "
                                        "nfguard 5,000/s (0.50); 100 queries judged")
    assert figures[1].result.endswith("added +0.030/+0.100 ms")
    assert (figures[1].met, figures[2].met) == (True, None)  # the goal: judging alone
    assert figures[3].result == "p50/p99 0.050/0.050 ms (rcode 5: 10)"
    late = run_of([0.25] * 100)
    assert query_figures(plain, judged, fast, late, fast, slow, refused, 100, 100,
                         plain)[1].met is False
    unjudged = query_figures(plain, judged, fast, slow, fast, slow, refused, 1, 100, plain)
    assert "this build judges none" in unjudged[0].result
    assert unjudged[1].met is None
    assert unjudged[3].result.startswith("not measured")
