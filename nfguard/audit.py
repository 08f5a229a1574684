"""Audit events: one per decided flow and per DNS query, in Elastic Common Schema names.

`audit_event` is pure (decision + packet + process -> nested dict); `AuditLog` is the
buffered writer, flushed by the daemon's timer and on every clean stop.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from nfguard.engine import Decision, Reason
from nfguard.lru import Memo
from nfguard.policy.resolve import QueryDecision
from nfguard.procs import ProcessInfo
from nfguard.version import version
from nfguard.wire.ip import TCP, TRANSPORT_NAMES, UDP, Packet

log = logging.getLogger(__name__)

_second_cache: list[Any] = [None, ""]
_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


def timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds, as ECS `@timestamp` expects.

    The formatted second is cached: many events share it, and strftime is the costly part;
    the milliseconds' text is looked up.
    """
    seconds, millis = divmod(round(now * 1000), 1000)
    cached_second, text = _second_cache
    if cached_second != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache[:] = [seconds, text]
    return text + _MILLIS[millis]


# ECS: the schema version the events follow (tests/data holds its field reference), and
# what every event says of its source. Shared by every event: never modified.
ECS_VERSION = "8.11.0"
_ECS = {"version": ECS_VERSION}
OBSERVER = {"type": "firewall", "vendor": "nfguard", "product": "nfguard", "version": version()}
DATASET, MODULE = "nfguard.audit", "nfguard"


def _event_fields(decision_type: str, verdict: str, action: str, reason: str) -> dict[str, Any]:
    """ECS `event`: a network event of `decision_type` ("connection" or, for DNS queries,
    "protocol") that the kernel let through ("allowed") or not ("denied"). Its outcome is
    whether nfguard could decide: an internal error decided by the fail mode instead.

    Values go in as plain strings (str() of the enums): orjson writes an enum member
    several times slower than a str."""
    return {
        "kind": "event",
        "category": ["network"],
        "type": [decision_type, "allowed" if verdict == "allow" else "denied"],
        "action": str(action),
        "reason": str(reason),
        "outcome": "failure" if reason == Reason.ENGINE_ERROR else "success",
        "dataset": DATASET,
        "module": MODULE,
    }


class _Who(NamedTuple):
    """What a process adds to each of its events, shared by them (read-only)."""

    observer: dict[str, Any]  # with the interface a forwarded flow came in on
    nfguard: dict[str, Any]  # nfguard.cgroup, unit and the flags on the executable
    fields: dict[str, Any]  # process, user, container
    users: list[str] | None  # related.user


class _Parts(NamedTuple):
    """What the events of one decision for one sender share (read-only): all but the
    time, the addresses and ports, and the related addresses."""

    head: dict[str, Any]  # ecs, event, nfguard, rule, observer, in the events' order
    who: _Who
    # The same in JSON, for flow_line: the head's members, then (each with a leading
    # comma, or none) destination.domain, the process's members, related.hosts and
    # related.user.
    head_json: str
    domain_json: str
    who_json: str
    hosts_json: str
    users_json: str


def audit_event(
    decision: Decision, packet: Packet | None, now: float, process: ProcessInfo | None = None
) -> dict[str, Any]:
    """A flow's event: a few inserts into what its decision and process share."""
    parts = _parts_of(decision, process)
    event = {"@timestamp": timestamp(now), **parts.head}
    host = None
    if packet is not None:
        _where(event, packet)
        host = decision.domain
        if host is not None:
            event["destination"]["domain"] = host
    who = parts.who
    event.update(who.fields)
    _related(event, packet, host, who.users)
    return event


def flow_line(decision: Decision, packet: Packet, now: float,
              process: ProcessInfo | None = None) -> bytes:
    """`render_json(audit_event(...))` of a flow with its packet, written out around what
    its decision and process share, already in JSON: the verdict path's usual event, where
    nothing reads it as a dict (an allow, in a JSON log, of no `nfguard exec` command)."""
    parts = _parts_of(decision, process)
    src, dst = packet.src, packet.dst  # addresses as inet_ntop writes them: nothing to escape
    network = _NETWORK_JSON.get((packet.proto, packet.version))
    if network is None:
        network = orjson.dumps(_network(packet)).decode()
    ips = f'"{src}","{dst}"' if src != dst else f'"{src}"'
    return (f'{{"@timestamp":"{timestamp(now)}",{parts.head_json},'
            f'"source":{{"ip":"{src}","port":{packet.sport}}},'
            f'"destination":{{"ip":"{dst}","port":{packet.dport}{parts.domain_json}}},'
            f'"network":{network}{parts.who_json},'
            f'"related":{{"ip":[{ips}]{parts.hosts_json}{parts.users_json}}}}}\n').encode()


def _parts_of(decision: Decision, process: ProcessInfo | None) -> _Parts:
    """What the events of the decision for the sender share, remembered by the decision
    and what the events show of the sender (a busy program opens flow after flow, each
    decided alike): one lookup, where asking `_who` first took two."""
    key = (decision, None if process is None else _shown(process))
    parts = _parts_memo.get(key)
    if parts is None:
        parts = _parts_memo.put(key, _parts(decision, _who(process)))
    return parts


def _parts(decision: Decision, who: _Who) -> _Parts:
    nfguard: dict[str, Any] = {
        "mode": str(decision.mode),
        "verdict": str(decision.verdict),
        "evidence": str(decision.evidence),
    }
    if decision.client is not None:
        nfguard["client"] = decision.client
    if decision.unreadable is not None:  # why the client's name could not be known
        nfguard["unreadable"] = str(decision.unreadable)
    if decision.private is not None:  # the internal address a name alone was kept from
        nfguard["private"] = str(decision.private)
    nfguard.update(who.nfguard)
    head: dict[str, Any] = {
        "ecs": _ECS,
        "event": _event_fields("connection", decision.verdict, decision.action,
                               decision.reason),
        "nfguard": nfguard,
    }
    if decision.rule is not None:
        head["rule"] = _rule(decision.rule)
    head["observer"] = who.observer
    host = decision.domain
    quoted = "" if host is None else orjson.dumps(host).decode()
    fields = orjson.dumps(who.fields)[1:-1].decode()
    return _Parts(head, who, orjson.dumps(head)[1:-1].decode(),
                  "" if host is None else ',"domain":' + quoted,
                  "," + fields if fields else "",
                  ',"hosts":[' + quoted + "]" if host else "",
                  ',"user":' + orjson.dumps(who.users).decode() if who.users else "")


_parts_memo: Memo[tuple[Decision, tuple | None], _Parts] = Memo(4096)


def query_event(decision: QueryDecision, qtype: str, mode: str, verdict: str, packet: Packet,
                now: float, process: ProcessInfo | None = None) -> dict[str, Any]:
    """One DNS query's decision: `dns.question` says what was asked, `event.action` what
    the policy says of it, `nfguard.verdict` what happened (audit mode lets it out)."""
    who = _who(process)
    event: dict[str, Any] = {
        "@timestamp": timestamp(now),
        "ecs": _ECS,
        "event": _event_fields("protocol", verdict, decision.action, decision.reason),
        "dns": {"type": "query", "question": {"name": decision.name, "type": qtype}},
        "nfguard": {"mode": str(mode), "verdict": str(verdict),
                    "evidence": str(decision.evidence)},
    }
    if decision.client is not None:
        event["nfguard"]["client"] = decision.client
    event["nfguard"].update(who.nfguard)
    if decision.rule is not None:
        event["rule"] = _rule(decision.rule)
    event["observer"] = who.observer
    _where(event, packet)
    event.update(who.fields)
    _related(event, packet, decision.name or None, who.users)
    return event


def _rule(name: str) -> dict[str, str]:
    """ECS `rule`: its name as the policy files say ("policy/rule"), and the policy it
    belongs to as the ruleset (a rule's own name has no '/')."""
    return {"name": name, "ruleset": name.rpartition("/")[0]}


def _related(event: dict[str, Any], packet: Packet | None, host: str | None,
             users: list[str] | None) -> None:
    """ECS `related`: the addresses, the name and the user of the event, for pivoting."""
    related: dict[str, Any] = {}
    if packet is not None:
        src, dst = packet.src, packet.dst
        related["ip"] = [src, dst] if src != dst else [src]
    if host:
        related["hosts"] = [host]
    if users is not None:
        related["user"] = users
    if related:
        event["related"] = related


_NETWORKS = {(proto, version): {"transport": TRANSPORT_NAMES[proto], "type": kind,
                                "direction": "egress"}
             for proto in (TCP, UDP) for version, kind in ((4, "ipv4"), (6, "ipv6"))}
_NETWORK_JSON = {key: orjson.dumps(network).decode() for key, network in _NETWORKS.items()}


def _where(event: dict[str, Any], packet: Packet) -> None:
    """The addresses and ports of an event, and its `network`."""
    event["source"] = {"ip": packet.src, "port": packet.sport}
    event["destination"] = {"ip": packet.dst, "port": packet.dport}
    event["network"] = _network(packet)


def _network(packet: Packet) -> dict[str, Any]:
    """ECS `network`: shared by the events of tcp and udp, built for another transport."""
    network = _NETWORKS.get((packet.proto, packet.version))
    if network is None:
        network = {"transport": packet.transport, "type": packet.network_type,
                   "direction": "egress"}
    return network


_NOBODY = _Who(OBSERVER, {}, {}, None)


# What events show of a sender: every field but the socket's inode, the groups (matched,
# not shown) and a forwarded flow's source (shown as source.ip): the senders' events that
# differ in these alone are alike.
_shown = itemgetter(*(index for index, field in enumerate(ProcessInfo._fields)
                      if field not in {"inode", "gids", "groups", "source"}))
_who_memo: Memo[tuple, _Who] = Memo(4096)


def _who(process: ProcessInfo | None) -> _Who:
    """The observer, process, user, unit and container fields of a sender's events,
    remembered by what they show (each flow's sender is a new ProcessInfo: its socket's)."""
    if process is None:
        return _NOBODY
    key = _shown(process)
    who = _who_memo.get(key)
    if who is None:
        who = _who_memo.put(key, _build_who(process))
    return who


def _build_who(process: ProcessInfo) -> _Who:
    nfguard: dict[str, Any] = {}
    if process.cgroup is not None:
        nfguard["cgroup"] = process.cgroup
    if process.unit is not None:
        nfguard["unit"] = process.unit
    if process.exe_deleted:  # replaced or unlinked while running
        nfguard["exe_deleted"] = True
    if process.exe_mismatch:  # the path names another file in a tree the sender made
        nfguard["exe_mismatch"] = True
    if process.unproven:  # found holding the socket, not seen connecting it
        nfguard["unproven"] = True
    observer: dict[str, Any] = OBSERVER
    if process.interface is not None:  # forwarded: a container's or a VM's flow
        observer = {**OBSERVER, "ingress": {"interface": {"name": process.interface}}}
    fields = _process_fields(process)
    container = process.container
    if container is not None:  # ECS container.*
        about: dict[str, Any] = {"id": container.id, "runtime": container.runtime}
        if container.name is not None:
            about["name"] = container.name
        image: dict[str, Any] = {}
        if container.image is not None:
            image["name"] = container.image
        if container.image_id is not None:
            image["hash"] = {"all": [container.image_id]}
        if image:
            about["image"] = image
        fields["container"] = about
    user = fields.get("user", {}).get("name")
    return _Who(observer, nfguard, fields, None if user is None else [user])


def _process_fields(process: ProcessInfo) -> dict[str, Any]:
    """The `process` and `user` fields."""
    fields: dict[str, Any] = {}
    info: dict[str, Any] = {
        "pid": process.pid,
        "name": os.path.basename(process.exe) if process.exe else None,
        "executable": process.exe,
        "command_line": " ".join(process.cmdline) if process.cmdline else None,
    }
    if process.sha256 is not None:
        info["hash"] = {"sha256": process.sha256}
    parent = {"pid": process.ppid, "executable": process.parent_exe}
    if any(v is not None for v in parent.values()):
        info["parent"] = {k: v for k, v in parent.items() if v is not None}
    info = {k: v for k, v in info.items() if v is not None}
    if info:
        fields["process"] = info
    user = {"id": str(process.uid) if process.uid is not None else None, "name": process.user}
    user = {k: v for k, v in user.items() if v is not None}
    if user:
        fields["user"] = user
    return fields


def render_json(event: dict[str, Any]) -> bytes:
    """One compact JSON line (orjson: ~0.4 µs an event where the json module takes ~5)."""
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)


def render_text(event: dict[str, Any]) -> bytes:
    return (text_line(event) + "\n").encode()


def text_line(event: dict[str, Any]) -> str:
    """One human line: when, decision, mode, who, what, why."""
    src = event.get("source", {})
    dst = event.get("destination", {})
    net = event.get("network", {})
    nfg = event["nfguard"]
    who = event.get("process", {}).get("executable") or "-"
    ingress = event.get("observer", {}).get("ingress", {}).get("interface", {}).get("name")
    if ingress is not None:
        who += f" via={ingress}"  # forwarded
    container = event.get("container")
    if container is not None:
        who += f" container={container.get('name') or container['id'][:12]}"
    target = f"{dst.get('ip', '?')}:{dst.get('port', '?')}"
    if "domain" in dst:
        target += f" ({dst['domain']})"
    question = event.get("dns", {}).get("question")
    if question is not None:
        target += f" query={question['name'] or '.'} {question['type']}"
    line = (
        f"{event['@timestamp']} {event['event']['action']} mode={nfg['mode']} "
        f"client={nfg.get('client', '-')} rule={event.get('rule', {}).get('name', '-')} "
        f"evidence={nfg['evidence']} {net.get('transport', '?')} "
        f"{src.get('ip', '?')}:{src.get('port', '?')} -> {target} exe={who} "
        f"reason={event['event']['reason']}"
        + (f" unreadable={nfg['unreadable']}" if "unreadable" in nfg else "")
        + (f" private={nfg['private']}" if "private" in nfg else "")
    )
    # Names and paths come from the wire and from processes: never let them forge a line.
    return line if line.isprintable() else line.encode("unicode_escape").decode("ascii")


class AuditFigures(NamedTuple):
    """What the writer did, for metrics and status (an operator alerts on the last three)."""

    events: int  # events handed to the writer
    write_failures: int  # writes the file refused (disk full, I/O error)
    kept_bytes: int  # rendered but not in the file yet: buffered, or kept back by failures
    lost_bytes: int  # dropped: past KEEP while the file could not be written, or at close


class AuditLog:
    """Buffered line writer; `flush` on a timer and `close` on stop lose nothing.

    Lines are kept whole in memory and written with one `write` to a file opened with
    O_APPEND, so several engine workers can share one audit file without interleaving.
    While the file cannot be written (disk full), only the timer's `flush` retries: an
    event costs the verdict path an append, never a failing write nor a join of what is
    kept, and the oldest whole lines go once more than KEEP bytes wait.
    """

    BUFFER = 1 << 16  # bytes kept before a write is due anyway
    KEEP = 16 << 20  # bytes kept for a retry while the file cannot be written (disk full)

    def __init__(self, path: str, fmt: str = "json") -> None:
        self.path = path
        self.render = render_text if fmt == "text" else render_json
        # Whether lines may come rendered already (write_line: flow_line's): JSON, and no
        # reader of the events as dicts (a subclass that reads them says not).
        self.takes_lines = self.render is render_json
        self.written = 0  # events handed to the writer
        self.errors = 0  # failed writes (the data is kept for the next flush, up to KEEP)
        self.lost = 0  # bytes dropped past KEEP, or left unwritten at close
        self._lines: deque[bytes] = deque()
        self._size = 0
        self._failing = False  # the last write failed: wait for the timer's flush
        self._fd: int | None = self._open()

    def _open(self) -> int:
        if self.path == "-":
            return sys.stdout.fileno()
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def figures(self) -> AuditFigures:
        return AuditFigures(self.written, self.errors, self._size, self.lost)

    def write(self, event: dict[str, Any]) -> None:
        self.write_line(self.render(event))

    def write_line(self, line: bytes) -> None:
        """One event's line, rendered as this log renders (see takes_lines)."""
        if self._fd is None:
            raise ValueError("the audit log is closed")
        self._lines.append(line)
        self._size += len(line)
        self.written += 1
        if self._failing:
            self._drop_past_keep()
        elif self._size >= self.BUFFER:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered. A failure (disk full) never reaches the verdict path:
        it is logged and counted, and the data waits for the next flush (up to KEEP)."""
        if not self._lines or self._fd is None:
            return
        data = memoryview(b"".join(self._lines))
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.error("cannot write the audit log %s: %s (%d failures; the newest %d MiB "
                          "are kept for a retry)", self.path, exc, self.errors, self.KEEP >> 20)
            self._failing = True
        else:
            if self._failing:
                log.warning("the audit log %s is written again (%d failures, %d bytes lost "
                            "so far)", self.path, self.errors, self.lost)
            self._failing = False
        self._lines = deque([bytes(data)] if data else ())
        self._size = len(data)
        self._drop_past_keep()

    def _drop_past_keep(self) -> None:
        """Forget the oldest lines while more than KEEP bytes wait (a line cut by a short
        write counts as one: its start is in the file)."""
        while self._size > self.KEEP:
            dropped = len(self._lines.popleft())
            self._size -= dropped
            self.lost += dropped

    def reopen(self) -> None:
        """For log rotation: flush, then continue in a new file at the same path."""
        self.flush()
        if self.path != "-" and self._fd is not None:
            os.close(self._fd)
            self._fd = self._open()

    def close(self) -> None:
        self.flush()
        if self._size:
            log.error("the audit log %s is closed with %d bytes it could not write",
                      self.path, self._size)
            self.lost += self._size
            self._lines.clear()
            self._size = 0
        if self.path != "-" and self._fd is not None:
            os.close(self._fd)
        self._fd = None
