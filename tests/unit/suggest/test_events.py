"""Audit lines read back as flows and queries; bad lines counted, never fatal."""

from __future__ import annotations

import json

from nfguard.suggest.events import read_flows
from tests.unit.suggest.samples import (
    APT,
    APT_LOG,
    MIXED,
    STUB,
    event,
    flows_of,
    lines,
    queries_of,
    query,
)


def test_malformed_lines_are_counted_not_fatal() -> None:
    good = lines(*MIXED[:3])
    bad = ["not json", "[1, 2]", '{"destination": {"ip": "nope", "port": 1}, '
           '"network": {"transport": "tcp"}}', json.dumps(event("192.0.2.1", 70000)),
           '{"x": 1}', ""]
    flowless = json.dumps({"@timestamp": "t", "event": {"action": "deny",
                                                        "reason": "unparseable_packet"},
                           "nfguard": {"mode": "enforce"}})
    result = read_flows([("a", [*good[:1], *bad, flowless, *good[1:]])])
    assert len(result.flows) == 3
    assert result.malformed == 5
    assert result.without_flow == 1
    assert result.examples[0].startswith("a:2: ")


def test_odd_domains_fall_back_to_the_address() -> None:
    flows = flows_of(event("192.0.2.1", 443, domain="bad name!"),
                     event("192.0.2.2", 443, domain="*.example.com"),
                     event("192.0.2.3", 443, domain="Example.COM."))
    assert [f.destination for f in flows] == ["192.0.2.1", "192.0.2.2", "example.com"]


def test_query_events_are_read_as_queries_not_flows() -> None:
    flows, queries = queries_of(*APT_LOG)
    assert [f.domain for f in flows] == ["deb.debian.org"]
    assert [(q.name, q.qtype, q.carrier.ip, q.carrier.port, q.carrier.proto)
            for q in queries][3:] == [("example.org", "TXT", STUB, 53, "udp"),
                                      ("example.org", "MX", STUB, 53, "udp")]
    assert queries[0].identity.exe == APT["exe"]
    bad = read_flows([("a", lines({**query("x.example"), "dns": {"type": "query"}}))])
    assert bad.malformed == 1 and not bad.queries
