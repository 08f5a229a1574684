"""Audit events (ECS, nested objects) and the buffered AuditLog."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from nfguard import audit
from nfguard.audit import AuditLog, audit_event, timestamp
from nfguard.engine import Decision, Reason
from nfguard.policy.match import Evidence
from nfguard.policy.model import Action, Mode
from nfguard.procs import ProcessInfo
from nfguard.procs.containers import Container
from nfguard.version import version
from nfguard.wire.ip import parse_packet
from tests.unit.names.test_queries import Host, udp
from tests.unit.test_forwarded import GH, OTHER, datagram, forward, harness

NOW = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z (exact in binary floating point)
STAMP = "2023-11-14T22:13:20.250Z"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

ALLOW = Decision("allow", "allow", "enforce", "rule_match", "sni", "deploy-bot",
                 "github/github-https", "api.github.com")
DENY_AUDIT = Decision("deny", "allow", "audit", "no_rule_match", "default", "ci")
NO_CLIENT = Decision("deny", "deny", "enforce", "no_client_match", "default")

V4 = parse_packet(bytes(IP(src="10.0.0.2", dst="140.82.112.3")
                        / TCP(sport=40000, dport=443, flags="S")))
V6 = parse_packet(bytes(IPv6(src="2001:db8::2", dst="2001:db8::53") / UDP(sport=5353, dport=53)))



def _line(rendered: str | bytes) -> str:
    """One rendered event as text, without its line end (renderers may return bytes)."""
    text = rendered.decode("utf-8") if isinstance(rendered, bytes) else rendered
    return text[:-1] if text.endswith("\n") else text


def render_json(event: dict) -> str:
    return _line(audit.render_json(event))


def render_text(event: dict) -> str:
    return _line(audit.render_text(event))


PROCESS = ProcessInfo(uid=1000, user="deploy", inode=77, pid=4242, exe="/usr/bin/git",
                      cmdline=("git", "push", "origin"), ppid=4000, parent_exe="/bin/bash",
                      cgroup="/system.slice/deploy.service", unit="deploy.service")


def test_timestamp_format() -> None:
    assert timestamp(NOW) == STAMP
    assert timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert timestamp(1_700_000_000.9994) == "2023-11-14T22:13:20.999Z"
    assert timestamp(1_700_000_000.9996) == "2023-11-14T22:13:21.000Z"  # rounded, carried
    assert timestamp(1_700_000_001.5) == "2023-11-14T22:13:21.500Z"
    assert timestamp(1_234_567_890.5) == "2009-02-13T23:31:30.500Z"
    assert TS.match(timestamp(1_234_567_890.5))


def test_timestamp_milliseconds_are_not_off_by_one() -> None:
    assert timestamp(1_700_000_000.123) == "2023-11-14T22:13:20.123Z"


def test_ecs_fields_are_nested_objects() -> None:
    event = audit_event(ALLOW, V4, NOW)
    assert event["@timestamp"] == STAMP
    assert event["event"]["action"] == "allow"
    assert event["event"]["reason"] == "rule_match"
    assert event["event"]["category"] == ["network"]
    assert "allowed" in event["event"]["type"]
    assert event["nfguard"]["mode"] == "enforce"
    assert event["nfguard"]["client"] == "deploy-bot"
    assert event["nfguard"]["evidence"] == "sni"
    assert event["nfguard"]["verdict"] == "allow"
    assert event["rule"] == {"name": "github/github-https", "ruleset": "github"}
    assert event["source"] == {"ip": "10.0.0.2", "port": 40000}
    assert event["destination"] == {"ip": "140.82.112.3", "port": 443,
                                    "domain": "api.github.com"}
    assert event["network"] == {"transport": "tcp", "type": "ipv4", "direction": "egress"}
    # ECS wants nested objects, never dotted keys.
    def keys(obj: object) -> list[str]:
        if isinstance(obj, dict):
            return [k for key, value in obj.items() for k in (key, *keys(value))]
        return []
    assert not [k for k in keys(event) if "." in k]
    assert "process" not in event and "user" not in event


def test_ipv6_udp_event_without_rule_or_domain() -> None:
    event = audit_event(DENY_AUDIT, V6, NOW)
    assert event["event"]["action"] == "deny"
    assert event["nfguard"]["mode"] == "audit"
    assert event["nfguard"]["verdict"] == "allow"
    assert "allowed" in event["event"]["type"]
    assert event["nfguard"]["evidence"] == "default"
    assert "rule" not in event
    assert event["destination"] == {"ip": "2001:db8::53", "port": 53}
    assert event["source"] == {"ip": "2001:db8::2", "port": 5353}
    assert event["network"] == {"transport": "udp", "type": "ipv6", "direction": "egress"}


def test_event_without_client_or_packet() -> None:
    event = audit_event(NO_CLIENT, None, NOW)
    assert "client" not in event["nfguard"]
    assert "denied" in event["event"]["type"]
    for absent in ("source", "destination", "network", "rule"):
        assert absent not in event
    json.loads(render_json(event))
    assert "\n" not in render_text(event)


def test_process_fields() -> None:
    event = audit_event(ALLOW, V4, NOW, PROCESS)
    assert event["process"] == {
        "pid": 4242, "name": "git", "executable": "/usr/bin/git",
        "command_line": "git push origin",
        "parent": {"pid": 4000, "executable": "/bin/bash"},
    }
    assert event["user"] == {"id": "1000", "name": "deploy"}
    assert event["nfguard"]["cgroup"] == "/system.slice/deploy.service"
    assert event["nfguard"]["unit"] == "deploy.service"


def test_partial_process_fields_leave_unknowns_out() -> None:
    event = audit_event(ALLOW, V4, NOW, ProcessInfo(uid=0))
    assert event["user"] == {"id": "0"}
    assert "process" not in event
    assert "cgroup" not in event["nfguard"] and "unit" not in event["nfguard"]
    event = audit_event(ALLOW, V4, NOW, ProcessInfo(pid=9, exe="/bin/x"))
    assert event["process"] == {"pid": 9, "name": "x", "executable": "/bin/x"}
    assert "user" not in event
    assert not {"exe_deleted", "exe_mismatch", "unproven"} & event["nfguard"].keys()


def test_replaced_executable_is_flagged_and_hash_shown() -> None:
    event = audit_event(ALLOW, V4, NOW, ProcessInfo(pid=9, exe="/usr/bin/x", exe_deleted=True,
                                                    sha256="ab" * 32))
    assert event["nfguard"]["exe_deleted"] is True
    assert event["process"] == {"pid": 9, "name": "x", "executable": "/usr/bin/x",
                                "hash": {"sha256": "ab" * 32}}


def test_a_sender_whose_program_proves_nothing_says_why() -> None:
    event = audit_event(NO_CLIENT, V4, NOW, ProcessInfo(pid=9, exe="/usr/bin/curl",
                                                        exe_mismatch=True))
    assert event["nfguard"]["exe_mismatch"] is True and "unproven" not in event["nfguard"]
    event = audit_event(NO_CLIENT, V4, NOW, ProcessInfo(pid=9, exe="/usr/bin/curl", unproven=True))
    assert event["nfguard"]["unproven"] is True and "exe_mismatch" not in event["nfguard"]


def test_json_is_one_compact_object_per_line() -> None:
    event = audit_event(ALLOW, V4, NOW, PROCESS)
    line = render_json(event)
    assert "\n" not in line
    assert json.loads(line) == event
    tricky = audit_event(ALLOW, V4, NOW, ProcessInfo(exe="/tmp/a\nb", cmdline=("ü", "x\ny")))
    assert "\n" not in render_json(tricky)
    assert json.loads(render_json(tricky))["process"]["command_line"] == "ü x\ny"


def test_text_format_is_one_line_with_the_essentials() -> None:
    line = render_text(audit_event(ALLOW, V4, NOW, PROCESS))
    assert "\n" not in line
    assert line.startswith(f"{STAMP} allow mode=enforce client=deploy-bot ")
    for part in ("rule=github/github-https", "evidence=sni", "tcp",
                 "10.0.0.2:40000 -> 140.82.112.3:443 (api.github.com)", "exe=/usr/bin/git",
                 "reason=rule_match"):
        assert part in line
    line = render_text(audit_event(NO_CLIENT, None, NOW))
    assert "client=- rule=-" in line and "exe=-" in line


def test_text_format_stays_one_line_for_hostile_values() -> None:
    hostile = ProcessInfo(exe="/tmp/x\n2023-01-01T00:00:00.000Z allow mode=enforce")
    assert "\n" not in render_text(audit_event(ALLOW, V4, NOW, hostile))


def test_audit_log_text_format(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), "text")
    log.write(audit_event(ALLOW, V4, NOW))
    log.write(audit_event(NO_CLIENT, V6, NOW))
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{STAMP} allow ")
    assert lines[1].startswith(f"{STAMP} deny ")


def test_audit_log_buffers_and_close_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "audit.jsonl"  # created on open
    log = AuditLog(str(path))
    event = audit_event(ALLOW, V4, NOW, PROCESS)
    for _ in range(10_000):
        log.write(event)
    assert log.written == 10_000
    # Buffered: not everything is on disk before flush/close.
    assert path.stat().st_size < 10_000 * (len(render_json(event).encode()) + 1)
    log.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10_000
    assert json.loads(lines[-1]) == event


def test_audit_log_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"old":1}\n')
    log = AuditLog(str(path))
    log.write(audit_event(ALLOW, V4, NOW))
    log.close()
    assert len(path.read_text().splitlines()) == 2


def test_reopen_after_rename_writes_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    for _ in range(3):
        log.write(audit_event(ALLOW, V4, NOW))
    os.rename(path, tmp_path / "audit.jsonl.1")
    log.write(audit_event(NO_CLIENT, V4, NOW))  # still goes to the renamed file
    log.reopen()
    log.write(audit_event(DENY_AUDIT, V6, NOW))
    log.close()
    old = (tmp_path / "audit.jsonl.1").read_text().splitlines()
    new = path.read_text().splitlines()
    assert len(old) == 4
    assert json.loads(old[-1])["event"]["reason"] == "no_client_match"
    assert len(new) == 1
    assert json.loads(new[0])["nfguard"]["client"] == "ci"


def test_stdout_log(capfd: pytest.CaptureFixture[str]) -> None:
    log = AuditLog("-")
    log.write(audit_event(ALLOW, V4, NOW))
    log.reopen()
    log.close()
    out = capfd.readouterr().out.splitlines()
    assert len(out) == 1 and json.loads(out[0])["event"]["action"] == "allow"


def test_lines_stay_whole_when_workers_share_the_file(tmp_path: Path) -> None:
    """Two writers (as two engine workers) append to one file: no line is torn."""
    path = str(tmp_path / "shared.jsonl")
    first, second = AuditLog(path), AuditLog(path)
    first.BUFFER = second.BUFFER = 700  # flush mid-stream, often
    for i in range(500):
        first.write(audit_event(ALLOW, V4, NOW, ProcessInfo(pid=i, exe="/a" * 40)))
        second.write(audit_event(ALLOW, V4, NOW, ProcessInfo(pid=i, exe="/b" * 40)))
    first.close()
    second.close()
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 1000
    assert {json.loads(line)["process"]["executable"][:2] for line in lines} == {"/a", "/b"}


def test_a_failing_disk_keeps_the_buffer_for_later(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(str(path))
    log.write(audit_event(ALLOW, V4, NOW))
    good = log._fd
    log._fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    log.flush()
    log.write(audit_event(ALLOW, V4, NOW))
    log.flush()
    assert log.errors == 2 and log.lost == 0 and not path.read_text()
    os.close(log._fd)
    log._fd = good  # space again
    log.close()
    assert len(path.read_text().splitlines()) == 2


def test_an_unreadable_name_says_why_in_both_formats() -> None:
    decision = Decision(Action.DENY, Action.DENY, Mode.ENFORCE, Reason.NAME_UNREADABLE,
                        Evidence.UNREADABLE, "everyone", unreadable="hello_timeout")
    event = audit_event(decision, V4, NOW)
    written = json.loads(render_json(event))
    assert written["event"]["reason"] == "name_unreadable"
    assert (written["nfguard"]["evidence"], written["nfguard"]["unreadable"]) == (
        "unreadable", "hello_timeout")
    assert written["event"]["action"] == "deny" == Action.DENY  # the ECS strings
    assert render_text(event).endswith("reason=name_unreadable unreadable=hello_timeout")


def test_a_name_kept_from_inside_says_what_kind_of_address_in_both_formats() -> None:
    decision = Decision(Action.DENY, Action.DENY, Mode.ENFORCE, Reason.NAME_PRIVATE_ADDRESS,
                        Evidence.SNI, "everyone", "web/api", "api.example.com",
                        private="metadata")
    event = audit_event(decision, V4, NOW)
    written = json.loads(render_json(event))
    assert written["event"]["reason"] == "name_private_address"
    assert written["nfguard"]["private"] == "metadata"
    assert render_text(event).endswith("reason=name_private_address private=metadata")
    plain = audit_event(decision._replace(private=None, reason=Reason.RULE_MATCH), V4, NOW)
    assert "private" not in plain["nfguard"]


def test_a_full_disk_costs_the_verdict_path_no_write_per_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the file cannot be written, events are kept (the newest KEEP bytes, whole
    lines) and retried by the timer's flush only: not one failing write, and one join of
    everything kept, per event."""
    path = tmp_path / "a.jsonl"
    log = AuditLog(str(path))
    log.BUFFER, log.KEEP = 1024, 16 * 1024
    good = log._fd
    log._fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    writes = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(audit.os, "write", counting_write)
    line = len(audit.render_json(audit_event(ALLOW, V4, NOW)))
    for _ in range(2000):  # ~20 KEEPs of events
        log.write(audit_event(ALLOW, V4, NOW))
    assert len(writes) == 1, "one failing write, then only the timer retries"
    log.flush()  # the timer
    assert len(writes) == 2
    figures = log.figures()
    assert figures.write_failures == 2
    assert log.KEEP - line < figures.kept_bytes <= log.KEEP
    assert figures.kept_bytes + figures.lost_bytes == 2000 * line
    assert figures.events == 2000
    os.close(log._fd)
    log._fd = good  # space again
    log.flush()
    assert log.figures().kept_bytes == 0
    kept = path.read_text().splitlines()
    assert len(kept) == figures.kept_bytes // line, "whole lines, the newest"
    assert all(json.loads(text)["event"]["action"] == "allow" for text in kept)
    log.close()


def test_what_close_cannot_write_is_counted_lost(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "a.jsonl"))
    log.write(audit_event(ALLOW, V4, NOW))
    good = log._fd
    log._fd = os.open("/dev/full", os.O_WRONLY)
    os.close(good)
    size = log.figures().kept_bytes
    assert size > 0
    log.close()
    assert log.figures().lost_bytes == size and log.figures().kept_bytes == 0


# ------------------------------------------------ ECS conformance, against Elastic's schema

ECS_FIELDS = json.loads((Path(__file__).resolve().parents[1] / "data" / (
    f"ecs_fields_{audit.ECS_VERSION}.json")).read_text())
# What a JSON value of each ECS type may be (the types nfguard's events can use).
ECS_TYPES: dict[str, Callable[[Any], bool]] = {
    "keyword": lambda v: isinstance(v, str), "constant_keyword": lambda v: isinstance(v, str),
    "wildcard": lambda v: isinstance(v, str), "match_only_text": lambda v: isinstance(v, str),
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "date": lambda v: isinstance(v, str) and TS.match(v) is not None,
    "ip": lambda v: isinstance(v, str) and _is_ip(v),
}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def leaves(obj: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in obj.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def ecs_problems(event: dict[str, Any]) -> list[str]:
    """Every way an event departs from the ECS field reference (nfguard.* are custom)."""
    problems = []
    for name, value in leaves(event):
        if name.startswith("nfguard."):
            continue
        spec = ECS_FIELDS.get(name)
        if spec is None:
            problems.append(f"{name}: not an ECS {audit.ECS_VERSION} field")
            continue
        is_array = "array" in spec.get("normalize", ())
        if isinstance(value, list) != is_array:
            problems.append(f"{name}: {'an array' if is_array else 'one value'} expected")
        for item in value if isinstance(value, list) else [value]:
            if not ECS_TYPES[spec["type"]](item):
                problems.append(f"{name}: {item!r} is not of ECS type {spec['type']}")
            allowed = {v["name"] for v in spec.get("allowed_values", ())}
            if allowed and item not in allowed:
                problems.append(f"{name}: {item!r} is not one of {sorted(allowed)}")
    # Each event.type must be one its categories expect.
    expected = {v["name"]: set(v["expected_event_types"])
                for v in ECS_FIELDS["event.category"]["allowed_values"]}
    for category in event["event"]["category"]:
        for kind in set(event["event"]["type"]) - expected[category]:
            problems.append(f"event.type {kind!r} is not expected for category {category!r}")
    return problems


class Senders:
    """Who sent: every field the attribution can give, for host and forwarded flows (a
    forwarded one from a container)."""

    info = ProcessInfo(uid=1000, user="deploy", pid=4242, exe="/usr/bin/git",
                       cmdline=("git", "fetch"), ppid=4000, parent_exe="/bin/bash",
                       cgroup="/system.slice/deploy.service", unit="deploy.service",
                       sha256="ab" * 32)
    container = Container("docker", "c" * 64, "ci-build", "python:3.12", "sha256:" + "d" * 64)

    def lookup(self, *args: Any, **kwargs: Any) -> ProcessInfo:
        return self.info

    def lookup_forwarded(self, *args: Any, **kwargs: Any) -> ProcessInfo:
        return self.info._replace(interface=args[6], container=self.container,
                                  cgroup="/system.slice/docker-" + "c" * 64 + ".scope")


def real_events(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Events the pipeline wrote: host and forwarded flows, DNS queries (enforce, audit),
    a flow whose name was unreadable, an internal error."""
    h = harness(tmp_path / "flows")
    h.pipeline.attributor = Senders()  # type: ignore[assignment]
    h.learn("github.com", GH)
    h.out(datagram(GH, 22))
    forward(h, datagram(GH, 22))
    forward(h, datagram(OTHER, 22))
    host_flow, forwarded, forwarded_denied = h.events()
    events = {"host flow": host_flow, "forwarded flow": forwarded,
              "forwarded, no rule": forwarded_denied}
    for mode in ("enforce", "audit"):
        host = Host(tmp_path / mode, mode=mode)
        host.pipeline.attributor = Senders()  # type: ignore[assignment]
        host.send(udp("www.allowed.test"))
        host.send(udp("x.attacker.test", "TXT", sport=40001))
        allowed, refused = host.queries()
        events[f"DNS query allowed, {mode}"] = allowed
        events[f"DNS query refused, {mode}"] = refused
        flow = next(e for e in host.events() if "dns" not in e)
        events[f"flow, {mode} mode"] = flow
    engine = h.pipeline.engine
    packet = parse_packet(datagram(GH, 443))
    events["unreadable"] = audit_event(
        engine.decide_unreadable(packet, "hello_unparseable", Senders.info), packet, NOW,
        Senders.info)
    events["engine error"] = audit_event(engine.failure(), packet, NOW)
    events["unparseable"] = audit_event(engine.unparseable(), packet, NOW)
    return events


def test_real_events_conform_to_the_ecs_field_reference(tmp_path: Path) -> None:
    events = real_events(tmp_path)
    assert {name: ecs_problems(event) for name, event in events.items()} == {
        name: [] for name in events}
    for name, event in events.items():
        assert event["ecs"] == {"version": audit.ECS_VERSION}, name
        assert event["network"]["direction"] == "egress", name
        assert event["observer"]["type"] == "firewall", name
        assert event["observer"]["vendor"] == event["observer"]["product"] == "nfguard", name
        assert event["observer"]["version"] == version(), name
        assert (event["event"]["dataset"], event["event"]["module"]) == ("nfguard.audit",
                                                                        "nfguard"), name
        assert event["event"]["kind"] == "event", name
        assert event["event"]["category"] == ["network"], name
        assert set(event["related"]["ip"]) == {event["source"]["ip"],
                                                event["destination"]["ip"]}, name
    flow = events["host flow"]
    assert flow["process"]["name"] == "git" and flow["related"]["user"] == ["deploy"]
    assert flow["rule"] == {"name": "web/github", "ruleset": "web"}
    assert flow["related"]["hosts"] == ["github.com"]
    assert "ingress" not in flow["observer"]
    assert events["forwarded flow"]["observer"]["ingress"] == {"interface": {"name": "lo"}}
    assert events["forwarded flow"]["container"]["image"]["name"] == "python:3.12"
    assert events["forwarded flow"]["event"]["type"] == ["connection", "allowed"]
    assert events["forwarded, no rule"]["event"]["type"] == ["connection", "denied"]
    refused = events["DNS query refused, enforce"]
    assert refused["event"]["type"] == ["protocol", "denied"]
    assert refused["related"]["hosts"] == ["x.attacker.test"]
    assert events["DNS query refused, audit"]["event"]["type"] == ["protocol", "allowed"]
    assert events["DNS query refused, audit"]["event"]["action"] == "deny"
    assert events["engine error"]["event"]["outcome"] == "failure"
    assert {e["event"]["outcome"] for n, e in events.items() if n != "engine error"} == {
        "success"}
    assert events["unreadable"]["nfguard"]["unreadable"] == "hello_unparseable"
    assert events["unreadable"]["event"]["reason"] == "name_unreadable"


def test_the_ecs_check_finds_what_elastic_would_flag() -> None:
    """The check itself can fail: unknown fields, wrong types, values outside the lists."""
    event = audit_event(ALLOW, V4, NOW, PROCESS)
    assert ecs_problems(event) == []
    # What the events of a decision and a process share is changed by copy, not in place.
    event["network"] = {**event["network"], "direction": ["egress"]}
    event["event"] = {**event["event"], "kind": "flow", "type": ["connection", "blocked"]}
    event["destination"]["port"] = "443"
    event["process"] = {**event["process"], "pid": True}
    event["source"]["ip"] = "10.0.0.300"
    event["rule"] = {**event["rule"], "policy": "github"}
    problems = "\n".join(ecs_problems(event))
    for needle in ("network.direction: one value expected", "event.kind: 'flow'",
                   "event.type: 'blocked'", "destination.port: '443'", "process.pid: True",
                   "rule.policy: not an ECS"):
        assert needle in problems, needle


def test_events_hold_plain_values_not_enum_members(tmp_path: Path) -> None:
    """orjson writes an enum member several times slower than a str: the verdict path's
    events carry plain strings only."""

    def enums(value: Any) -> Iterator[Any]:
        if isinstance(value, dict):
            for item in value.values():
                yield from enums(item)
        elif isinstance(value, list):
            for item in value:
                yield from enums(item)
        elif isinstance(value, Enum):
            yield value

    events = real_events(tmp_path)
    assert {name: list(enums(event)) for name, event in events.items()} == {
        name: [] for name in events}


def test_a_flows_line_is_its_events_json_byte_for_byte() -> None:
    """flow_line writes what render_json writes of audit_event, for every kind of decision,
    packet and sender: hostile names and arguments, forwarded and contained senders, the
    same address at both ends, a transport other than tcp and udp."""
    decisions = [ALLOW, DENY_AUDIT, NO_CLIENT,
                 ALLOW._replace(domain='a"b\\c\n\u00e9.example'), ALLOW._replace(domain=""),
                 Decision(Action.DENY, Action.DENY, Mode.ENFORCE, Reason.NAME_UNREADABLE,
                          Evidence.UNREADABLE, "c", None, None, "hello_timeout"),
                 Decision(Action.ALLOW, Action.ALLOW, Mode.ENFORCE, Reason.RULE_MATCH,
                          Evidence.DNS, "c", "p/r", "x.test", None, "private")]
    packets = [V4, V6, parse_packet(bytes(IP(src="10.0.0.2", dst="10.0.0.2")
                                          / UDP(sport=1, dport=53))),
               parse_packet(bytes(IP(src="10.0.0.2", dst="10.0.0.3") / b"\x08\x00\x00\x00"))]
    container = Container("docker", "c" * 64, "ci", "python:3.12", "sha256:" + "d" * 64)
    senders = [None, PROCESS, ProcessInfo(uid=0), ProcessInfo(pid=9, exe="/tmp/a\"\n",
                                                              cmdline=("\u00fc", "x\ny")),
               ProcessInfo(pid=9, exe="/x", exe_deleted=True, exe_mismatch=True,
                           unproven=True, interface="eth0", container=container)]
    for decision in decisions:
        for packet in packets:
            for sender in senders:
                for _twice in range(2):  # built, then from what is remembered
                    assert audit.flow_line(decision, packet, NOW, sender) == audit.render_json(
                        audit_event(decision, packet, NOW, sender))


def test_only_a_json_log_takes_lines(tmp_path: Path) -> None:
    assert AuditLog(str(tmp_path / "a.jsonl")).takes_lines
    assert not AuditLog(str(tmp_path / "a.txt"), "text").takes_lines


def test_senders_alike_but_for_their_sockets_share_what_their_events_show() -> None:
    """Each flow's sender is a new ProcessInfo (its socket's inode); what its events show
    of it is built once per sender that shows alike."""
    first = PROCESS._replace(inode=1, gids=(1,), groups=("a",))
    second = PROCESS._replace(inode=2, gids=(2,), groups=("b",), source="10.1.1.1")
    assert audit._who(first) is audit._who(second)
    assert audit_event(ALLOW, V4, NOW, first) == audit_event(ALLOW, V4, NOW, second)
    assert audit._who(PROCESS._replace(unproven=True)) is not audit._who(PROCESS)
