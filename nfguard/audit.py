"""Audit events: one per decided flow, in Elastic Common Schema field names.

`audit_event` is pure (decision + packet + process -> nested dict); `AuditLog` is the
buffered writer, flushed by the daemon's timer and on every clean stop.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

import orjson

from nfguard.engine import Decision
from nfguard.procs import ProcessInfo
from nfguard.wire.ip import Packet

_second_cache: list[Any] = [None, ""]


def timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds, as ECS `@timestamp` expects.

    The formatted second is cached: many events share it, and strftime is the costly part.
    """
    seconds, millis = divmod(round(now * 1000), 1000)
    cached_second, text = _second_cache
    if cached_second != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache[:] = [seconds, text]
    return f"{text}.{millis:03d}Z"


def audit_event(
    decision: Decision, packet: Packet | None, now: float, process: ProcessInfo | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "@timestamp": timestamp(now),
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["connection", "allowed" if decision.verdict == "allow" else "denied"],
            "action": decision.action,
            "reason": decision.reason,
        },
        "nfguard": {
            "mode": decision.mode,
            "verdict": decision.verdict,
            "evidence": decision.evidence,
        },
    }
    if decision.client is not None:
        event["nfguard"]["client"] = decision.client
    if decision.rule is not None:
        event["rule"] = {"name": decision.rule}
    if packet is not None:
        event["source"] = {"ip": packet.src, "port": packet.sport}
        event["destination"] = {"ip": packet.dst, "port": packet.dport}
        if decision.domain is not None:
            event["destination"]["domain"] = decision.domain
        event["network"] = {"transport": packet.transport, "type": packet.network_type}
    if process is not None:
        event.update(_process_fields(process))
        if process.cgroup is not None:
            event["nfguard"]["cgroup"] = process.cgroup
        if process.unit is not None:
            event["nfguard"]["unit"] = process.unit
        if process.exe_deleted:  # replaced or unlinked while running
            event["nfguard"]["exe_deleted"] = True
    return event


def _process_fields(process: ProcessInfo) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    info = {
        "pid": process.pid,
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
    target = f"{dst.get('ip', '?')}:{dst.get('port', '?')}"
    if "domain" in dst:
        target += f" ({dst['domain']})"
    line = (
        f"{event['@timestamp']} {event['event']['action']} mode={nfg['mode']} "
        f"client={nfg.get('client', '-')} rule={event.get('rule', {}).get('name', '-')} "
        f"evidence={nfg['evidence']} {net.get('transport', '?')} "
        f"{src.get('ip', '?')}:{src.get('port', '?')} -> {target} exe={who} "
        f"reason={event['event']['reason']}"
    )
    # Names and paths come from the wire and from processes: never let them forge a line.
    return line if line.isprintable() else line.encode("unicode_escape").decode("ascii")


class AuditLog:
    """Buffered line writer; `flush` on a timer and `close` on stop lose nothing."""

    def __init__(self, path: str, fmt: str = "json") -> None:
        self.path = path
        self.render = render_text if fmt == "text" else render_json
        self.written = 0
        self._file: IO[bytes] = self._open()

    def _open(self) -> IO[bytes]:
        if self.path == "-":
            return sys.stdout.buffer
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        return open(self.path, "ab", buffering=1 << 16)

    def write(self, event: dict[str, Any]) -> None:
        self._file.write(self.render(event))
        self.written += 1

    def flush(self) -> None:
        self._file.flush()

    def reopen(self) -> None:
        """For log rotation: flush, then continue in a new file at the same path."""
        self.flush()
        if self._file is not sys.stdout.buffer:
            self._file.close()
            self._file = self._open()

    def close(self) -> None:
        self.flush()
        if self._file is not sys.stdout.buffer:
            self._file.close()
