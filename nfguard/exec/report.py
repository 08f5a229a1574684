"""What one `nfguard exec` command reached: flow records, the summary and the suggestion.

Both paths make the same records from the same audit events: the private engine from the
events its pipeline writes, the service from the events of the command's transient client
(sent back over the control socket as JSON objects, `FlowRecord._asdict()`). So the
summary of denials and the `--audit` suggestion are computed here once, from records only.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any, NamedTuple

from nfguard.suggest.build import suggest
from nfguard.suggest.events import Flow, Query, Resolvers, parse_event

SUMMARY_LINES = 20  # distinct denials listed; the rest are counted


class Kind(StrEnum):
    FLOW = "flow"  # a connection or a UDP flow
    QUERY = "query"  # a DNS query (`name` is its question, `qtype` its type)


class FlowRecord(NamedTuple):
    """One decided flow or DNS query of the command, with how many times it was seen."""

    kind: str  # Kind
    address: str  # destination.ip
    port: int
    transport: str  # "tcp" | "udp" | ...
    name: str | None  # destination.domain, or a query's question name
    evidence: str | None  # nfguard.evidence: "cidr" | "dns" | "sni" | "host" | "default" ...
    action: str  # the policy's decision: "allow" | "deny"
    verdict: str  # what happened to it ("allow" in audit mode whatever the action)
    reason: str
    rule: str | None
    client: str | None
    exe: str | None
    pid: int | None
    comm: str | None  # the command line's first word (argv0), as the event has it
    user: str | None  # user name, or uid digits
    qtype: str | None = None
    count: int = 1  # type: ignore[assignment]  # times seen (shadows tuple.count)

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two records the same (everything but the pid and the count)."""
        return (*self[:11], self.exe, self.comm, self.user, self.qtype)

    @property
    def destination(self) -> str:
        where = self.name or self.address
        if self.kind == Kind.QUERY:
            return f"{where} ({self.qtype or '?'} query to {self.address})"
        return f"{where}:{self.port}/{self.transport}"


def from_event(event: dict[str, Any]) -> FlowRecord | None:
    """An audit event -> its record; None for events without a destination."""
    destination = event.get("destination")
    if not isinstance(destination, dict):
        return None
    meta = event.get("event") or {}
    nfg = event.get("nfguard") or {}
    process = event.get("process") or {}
    user = event.get("user") or {}
    question = (event.get("dns") or {}).get("question")
    command = process.get("command_line")
    return FlowRecord(
        kind=Kind.QUERY if question else Kind.FLOW,
        address=str(destination.get("ip", "")),
        port=int(destination.get("port", 0)),
        transport=str((event.get("network") or {}).get("transport", "")),
        name=question.get("name") if question else destination.get("domain"),
        evidence=nfg.get("evidence"),
        action=str(meta.get("action", "")),
        verdict=str(nfg.get("verdict", meta.get("action", ""))),
        reason=str(meta.get("reason", "")),
        rule=(event.get("rule") or {}).get("name"),
        client=nfg.get("client"),
        exe=process.get("executable"),
        pid=process.get("pid"),
        comm=command.split(" ", 1)[0] if isinstance(command, str) and command else None,
        user=user.get("name") or user.get("id"),
        qtype=question.get("type") if question else None,
    )


def from_json(value: Any) -> FlowRecord:
    """A record sent as a JSON object (the service's answer); ValueError if it is not one."""
    if not isinstance(value, dict):
        raise ValueError("flow record is not an object")
    try:
        return FlowRecord(**value)
    except TypeError as exc:
        raise ValueError(f"bad flow record: {exc}") from None


def tally(records: Iterable[FlowRecord]) -> list[FlowRecord]:
    """Records of the same flow made one, counts added, in first-seen order."""
    merged: dict[tuple[Any, ...], FlowRecord] = {}
    for record in records:
        seen = merged.get(record.key)
        merged[record.key] = record if seen is None else seen._replace(
            count=seen.count + record.count)
    return list(merged.values())


def to_event(record: FlowRecord) -> dict[str, Any]:
    """The audit event a record came from, as far as `suggest` reads one."""
    event: dict[str, Any] = {
        "event": {"action": record.action, "reason": record.reason},
        "nfguard": {"verdict": record.verdict, "evidence": record.evidence},
        "destination": {"ip": record.address, "port": record.port},
        "network": {"transport": record.transport},
    }
    if record.kind == Kind.QUERY:
        event["dns"] = {"type": "query",
                        "question": {"name": record.name or "", "type": record.qtype}}
    elif record.name:
        event["destination"]["domain"] = record.name
    process = {k: v for k, v in (("executable", record.exe), ("pid", record.pid),
                                 ("command_line", record.comm)) if v is not None}
    if process:
        event["process"] = process
    if record.user is not None:
        event["user"] = ({"id": record.user} if record.user.isdigit()
                         else {"name": record.user})
    return event


def suggestion(records: Iterable[FlowRecord], resolvers: Resolvers | None = None) -> str:
    """The policy `nfguard suggest` writes for what the command reached (TOML text)."""
    flows: list[Flow] = []
    queries: list[Query] = []
    for record in records:
        parsed = parse_event(to_event(record))
        (queries if isinstance(parsed, Query) else flows).append(parsed)  # type: ignore[arg-type]
    return suggest(flows, resolvers=resolvers, queries=queries)


def summary(records: Iterable[FlowRecord], limit: int = SUMMARY_LINES) -> str:
    """One screen of what the policy denied (refused, for queries); "" when nothing was.
    Audit mode lists what it would have denied."""
    denied = [r for r in tally(records) if r.action == "deny"]
    if not denied:
        return ""
    passed = any(r.verdict == "allow" for r in denied)
    head = "would have been denied" if passed else "denied"
    total = sum(r.count for r in denied)
    lines = [f"nfguard exec: {total} flow(s) {head}:"]
    for record in denied[:limit]:
        who = record.exe or record.comm or "(process unknown)"
        if record.pid is not None:
            who += f" [{record.pid}]"
        times = f" x{record.count}" if record.count > 1 else ""
        lines.append(f"  {record.destination}  by {who}  ({record.reason}"
                     f"{', rule ' + record.rule if record.rule else ''}){times}")
    if len(denied) > limit:
        lines.append(f"  ... and {len(denied) - limit} more")
    return "\n".join(lines) + "\n"


def reached(records: Iterable[FlowRecord]) -> str:
    """`--audit`: every destination the command reached, one line each."""
    lines = []
    for record in sorted(tally(records), key=lambda r: (r.kind, r.destination)):
        times = f" x{record.count}" if record.count > 1 else ""
        lines.append(f"  {record.destination}  by {record.exe or record.comm or '?'}"
                     f"  (policy: {record.action}){times}")
    return "\n".join(lines) + ("\n" if lines else "")
