"""`nfguard log`: audit events as lines a person reads, and which events to show.

Pure: an event (the audit log's JSON object) -> one line; the reading and following of
files is nfguard.follow's. Every value shown came from the wire or from a process, so a
line is made printable before it is coloured: no name can forge a line or a colour.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import orjson


class Colour(StrEnum):
    """ANSI SGR sequences; PLAIN when the output is not a terminal (or NO_COLOR is set)."""

    RED = "\x1b[1;31m"
    YELLOW = "\x1b[33m"
    GREEN = "\x1b[32m"
    DIM = "\x1b[2m"
    RESET = "\x1b[0m"


def wants_colour(isatty: bool, environ: dict[str, str] | Any) -> bool:
    """Colour on a terminal unless NO_COLOR (https://no-color.org) is set, or TERM=dumb."""
    return isatty and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


class Filter(NamedTuple):
    """Which events `nfguard log` shows; each field left at its default lets all through."""

    deny: bool = False  # only what the policy denies (in audit mode too: let through)
    client: str | None = None  # only this client's
    since: float | None = None  # only events at or after this time (epoch seconds)

    def wants(self, event: dict[str, Any]) -> bool:
        if self.deny and _get(event, "event", "action") != "deny":
            return False
        if self.client is not None and _get(event, "nfguard", "client") != self.client:
            return False
        if self.since is not None:
            at = event_time(event)
            if at is None or at < self.since:
                return False
        return True


def parse_event(line: bytes) -> dict[str, Any] | None:
    """One audit line as an event, or None for anything else (a text-format line, junk)."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), dict):
        return None
    return event


def event_time(event: dict[str, Any]) -> float | None:
    """`@timestamp` (RFC 3339, as the audit log writes it) as epoch seconds."""
    stamp = event.get("@timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?$")
_UNITS = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """`--since`: "90s", "10m", "2h", "1d" ago; "14:30" (today, local time); or an ISO
    date or date and time ("2026-12-07", "2026-12-07T14:30", with an offset or "Z")."""
    text = text.strip()
    duration = _DURATION.match(text)
    if duration:
        return now - float(duration.group(1)) * _UNITS[duration.group(2)]
    try:
        if re.fullmatch(r"\d{1,2}:\d\d(:\d\d)?", text):
            clock = datetime.strptime(text if text.count(":") == 2 else text + ":00",
                                      "%H:%M:%S").time()
            return datetime.combine(datetime.fromtimestamp(now).date(), clock).timestamp()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"--since {text!r}: want 10m, 2h, 1d, 14:30 or "
                         "2026-12-07T14:30") from None


def render(event: dict[str, Any], colour: bool = False, tz: Any = None) -> str:
    """One event as one line: when, decision, client/rule, who, where to, why.

    `tz`: the zone times are shown in (None: local time).
    """
    nfg = _dict(event.get("nfguard"))
    action = str(_get(event, "event", "action") or "?")
    verdict = nfg.get("verdict", action)
    mark = action.upper()
    if action == "deny" and verdict == "allow":
        mark = "DENY*"  # audit mode: the policy denies, the flow was let through
    decided_by = f"{nfg.get('client', '-')}/{_get(event, 'rule', 'name') or '-'}"
    reason = str(_get(event, "event", "reason") or "")
    if mark == "DENY*":
        reason += " (audit mode: let through)"
    if "unreadable" in nfg:
        reason += f" unreadable={nfg['unreadable']}"
    when = printable(_when(event, tz))
    what = printable("  ".join((decided_by, _who(event), _where(event))))
    shown_mark, reason = printable(f"{mark:<5}"), printable(reason)
    if colour:
        paint = {"DENY": Colour.RED, "DENY*": Colour.YELLOW, "ALLOW": Colour.GREEN}.get(mark)
        if paint is not None:
            shown_mark = f"{paint}{shown_mark}{Colour.RESET}"
        reason = f"{Colour.DIM}{reason}{Colour.RESET}"
    return f"{when}  {shown_mark}  {what}  {reason}"


def _when(event: dict[str, Any], tz: Any) -> str:
    at = event_time(event)
    if at is None:
        return str(event.get("@timestamp", "?"))
    shown = datetime.fromtimestamp(at, tz)
    return shown.strftime("%Y-%m-%d %H:%M:%S.") + f"{shown.microsecond // 1000:03d}"


def _who(event: dict[str, Any]) -> str:
    process = _dict(event.get("process"))
    who = str(process.get("executable") or "?")
    if "pid" in process:
        who += f"[{process['pid']}]"
    user = _dict(event.get("user"))
    if "name" in user or "id" in user:
        who += f" {user.get('name') or 'uid ' + str(user['id'])}"
    container = _dict(event.get("container"))
    if container:
        who += f" container={container.get('name') or str(container.get('id', '?'))[:12]}"
    ingress = _get(event, "observer", "ingress", "interface", "name")
    if ingress is not None:
        who += f" via {ingress}"  # forwarded: a container's or a VM's flow
    unit = _get(event, "nfguard", "unit")
    if unit is not None:
        who += f" ({unit})"
    return who


def _where(event: dict[str, Any]) -> str:
    dst = _dict(event.get("destination"))
    transport = _get(event, "network", "transport") or "?"
    ip, port = dst.get("ip", "?"), dst.get("port", "?")
    address = f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"
    question = _get(event, "dns", "question")
    if isinstance(question, dict):
        return (f"{transport} query {question.get('name') or '.'} {question.get('type', '?')} "
                f"to {address}")
    domain = dst.get("domain")
    return f"{transport} -> {domain} ({address})" if domain else f"{transport} -> {address}"


def printable(text: str) -> str:
    """`text`, or its escaped form if it holds anything a terminal would act on."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _get(event: dict[str, Any], *keys: str) -> Any:
    value: Any = event
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
