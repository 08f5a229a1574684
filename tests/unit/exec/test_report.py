"""Flow records from audit events; the summary and the suggestion from records."""

from __future__ import annotations

import json

import pytest

from nfguard.exec.report import (
    FlowRecord,
    Kind,
    from_event,
    from_json,
    reached,
    suggestion,
    summary,
    tally,
)


def record(**changes: object) -> FlowRecord:
    base = FlowRecord(Kind.FLOW, "192.0.2.1", 443, "tcp", "example.org", "dns", "deny",
                      "deny", "default", None, "exec", "/usr/bin/curl", 42, "curl", "alice")
    return base._replace(**changes)


def test_a_record_from_an_audit_event() -> None:
    event = {"event": {"action": "deny", "reason": "default"},
             "nfguard": {"verdict": "deny", "evidence": "default", "client": "exec"},
             "destination": {"ip": "192.0.2.1", "port": 443, "domain": "example.org"},
             "network": {"transport": "tcp"},
             "process": {"pid": 42, "executable": "/usr/bin/curl",
                         "command_line": "curl https://example.org/"},
             "user": {"id": "1000", "name": "alice"}}
    assert from_event(event) == record(evidence="default")


def test_query_events_and_events_without_destination() -> None:
    event = {"event": {"action": "deny", "reason": "name_not_allowed"},
             "nfguard": {"verdict": "deny"}, "dns": {"type": "query", "question": {
                 "name": "evil.example", "type": "TXT"}},
             "destination": {"ip": "10.0.0.53", "port": 53}, "network": {"transport": "udp"}}
    query = from_event(event)
    assert query is not None and query.kind == Kind.QUERY and query.qtype == "TXT"
    assert query.name == "evil.example"
    assert from_event({"event": {}, "nfguard": {}}) is None


def test_records_travel_as_json_objects() -> None:
    original = record()
    assert from_json(json.loads(json.dumps(original._asdict()))) == original
    with pytest.raises(ValueError):
        from_json({"kind": "flow"})
    with pytest.raises(ValueError):
        from_json([1, 2])


def test_tally_merges_the_same_flow_of_any_pid() -> None:
    merged = tally([record(), record(pid=43), record(port=80)])
    assert [(r.port, r.count) for r in merged] == [(443, 2), (80, 1)]


def test_summary_lists_denials_only_and_is_empty_without_any() -> None:
    assert summary([record(action="allow", verdict="allow")]) == ""
    text = summary([record(), record(), record(address="192.0.2.9", name=None, port=22)])
    assert "3 flow(s) denied" in text
    assert "example.org:443/tcp  by /usr/bin/curl [42]  (default) x2" in text
    assert "192.0.2.9:22/tcp" in text
    many = summary([record(port=p) for p in range(1, 30)], limit=5)
    assert "... and 24 more" in many
    audit = summary([record(verdict="allow")])
    assert "would have been denied" in audit


def test_suggestion_allows_what_was_reached() -> None:
    text = suggestion([record(), record(kind=Kind.QUERY, address="10.0.0.53", port=53,
                                        transport="udp", qtype="A")])
    assert '"example.org"' in text and "ports = [443]" in text
    assert "example.org:443/tcp" in reached([record()])
