"""Audit events as `nfguard.audit` writes them, and a policy to judge them by: shared by
the suggest tests and the `nfguard suggest` ones of tests/unit/test_cli.py."""

from __future__ import annotations

import json
from typing import Any

from nfguard.policy.load import parse_policy_texts
from nfguard.suggest.events import read_flows

CURL = {"exe": "/usr/bin/curl", "user": "alice"}
APT = {"exe": "/usr/lib/apt/methods/http", "user": "_apt", "unit": "apt-daily.service"}


def event(ip: str, port: int, proto: str = "tcp", domain: str | None = None,
          who: dict[str, str] | None = None, ts: str = "2026-11-21T13:13:09.158Z",
          action: str = "deny", uid: str | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "@timestamp": ts,
        "event": {"kind": "event", "action": action, "reason": "no_rule_match"},
        "nfguard": {"mode": "audit", "verdict": "allow", "evidence": "default"},
        "source": {"ip": "10.9.9.9", "port": 40000},
        "destination": {"ip": ip, "port": port},
        "network": {"transport": proto, "type": "ipv6" if ":" in ip else "ipv4"},
    }
    if domain is not None:
        ev["destination"]["domain"] = domain
    who = who or {}
    if "exe" in who:
        ev["process"] = {"pid": 42, "executable": who["exe"]}
    if "user" in who or uid is not None:
        ev["user"] = {k: v for k, v in (("name", who.get("user")), ("id", uid)) if v}
    if "unit" in who:
        ev["nfguard"]["unit"] = who["unit"]
    if "interface" in who:
        ev["observer"] = {"ingress": {"interface": {"name": who["interface"]}}}
    return ev


def lines(*events: dict[str, Any]) -> list[str]:
    return [json.dumps(e) for e in events]


def flows_of(*events: dict[str, Any]):
    result = read_flows([("audit.jsonl", lines(*events))])
    assert result.malformed == 0
    return result.flows


def load(text: str):
    return parse_policy_texts([("suggested.toml", text)])


MIXED = [
    event("93.184.216.34", 443, domain="a.example.com", who=CURL),
    event("93.184.216.35", 443, domain="b.example.com", who=CURL,
          ts="2026-11-21T13:20:00.000Z"),
    event("93.184.216.36", 443, domain="c.example.com", who=CURL, action="allow"),
    event("93.184.216.37", 80, domain="example.com", who=CURL),
    event("151.101.0.223", 443, domain="pypi.org", who=CURL),
    event("192.0.2.10", 8443, who=CURL),
    event("2001:db8::7", 8443, who=CURL),
    event("10.0.0.53", 53, proto="udp", who=CURL),
    event("151.101.64.223", 80, domain="deb.debian.org", who=APT),
    event("151.101.64.224", 443, domain="security.debian.org", who=APT),
    event("198.51.100.1", 123, proto="udp"),
    event("198.51.100.2", 0, proto="icmp"),
    event("203.0.113.9", 443, who={"exe": "/opt/weird \"tool\"[1]*"}, uid="1001"),
]


POLICY = """\
[[client]]
name = "curl"
match = { exe = "/usr/bin/curl" }
policies = ["web"]

[[client]]
name = "everyone"
policies = ["dns"]

[[policy]]
name = "web"

[[policy.rule]]
name = "example"
action = "allow"
to = ["**.example.com"]
ports = [443]
proto = "tcp"

[[policy.rule]]
name = "no-8443"
action = "deny"
to = ["192.0.2.0/24"]

[[policy]]
name = "dns"

[[policy.rule]]
action = "allow"
ports = [53, 123]
proto = "udp"
"""


STUB = "127.0.0.53"


def query(name: str, qtype: str = "A", who: dict[str, str] | None = None,
          ts: str = "2026-12-07T10:00:00.000Z", action: str = "deny",
          resolver: str = STUB) -> dict[str, Any]:
    """A query's audit event, as the engine writes it (refused ones from audit mode)."""
    ev = event(resolver, 53, "udp", who=who, ts=ts, action=action)
    ev["event"]["reason"] = "rule_match" if action == "allow" else "name_not_allowed"
    ev["dns"] = {"type": "query", "question": {"name": name, "type": qtype}}
    return ev


def queries_of(*events: dict[str, Any]):
    result = read_flows([("audit.jsonl", lines(*events))])
    assert result.malformed == result.without_flow == 0
    return result.flows, result.queries


APT_LOG = [
    query("_http._tcp.deb.debian.org", "SRV", who=APT),
    query("deb.debian.org", who=APT),
    query("deb.debian.org", "AAAA", who=APT),
    event("151.101.2.132", 80, domain="deb.debian.org", who=APT),
    query("Example.ORG.", "TXT", who=CURL),
    query("example.org", "MX", who=CURL, ts="2026-12-07T10:05:00.000Z"),
]
