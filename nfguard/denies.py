"""What the policy denied lately and most often, for `nfguard status`, in bounded memory.

The most recent denies are a short ring. The most frequent are counted with the
Space-Saving algorithm (Metwally, Agrawal, El Abbadi 2005): TRACKED counters; a deny of a
kind not tracked takes over the smallest counter and inherits its count as its possible
overcount (`error`). Any kind denied more often than total/TRACKED times is sure to be
tracked, and its count is off by at most its `error`, so the top of the list is right
whatever a flood of distinct destinations does to the tail.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

RECENT = 10  # denies kept as they happened
TRACKED = 64  # kinds of deny counted (Space-Saving counters)
SHOWN = 5  # most frequent kinds `nfguard status` lists


class Kind(NamedTuple):
    """What makes two denies the same: who, and where to."""

    client: str
    executable: str
    destination: str  # the name it was denied for, or the address
    port: int | None
    transport: str


class Deny(NamedTuple):
    """One deny as `nfguard status` shows it."""

    at: str  # @timestamp
    kind: Kind
    rule: str
    reason: str
    enforced: bool  # False: audit mode let it through


class Count(NamedTuple):
    kind: Kind
    times: int
    error: int  # at most this much of `times` may belong to kinds counted before it


def kind_of(event: dict[str, Any]) -> Kind:
    dst = event.get("destination") or {}
    question = (event.get("dns") or {}).get("question")
    name = question.get("name") if isinstance(question, dict) else dst.get("domain")
    return Kind(str(event.get("nfguard", {}).get("client", "-")),
                str((event.get("process") or {}).get("executable") or "?"),
                str(name or dst.get("ip") or "?"), dst.get("port"),
                str((event.get("network") or {}).get("transport") or "?"))


class Denies:
    """Fed every audit event the policy denies (`add`); picklable, so engine workers
    send theirs to the main process, which adds them up (`merged`)."""

    def __init__(self) -> None:
        self.total = 0
        self.recent: deque[Deny] = deque(maxlen=RECENT)
        self._counts: dict[Kind, list[int]] = {}  # kind -> [count, error]

    def add(self, event: dict[str, Any]) -> None:
        kind = kind_of(event)
        self.total += 1
        self.recent.append(Deny(str(event.get("@timestamp", "?")), kind,
                                str((event.get("rule") or {}).get("name", "-")),
                                str(event["event"].get("reason", "?")),
                                event.get("nfguard", {}).get("verdict") != "allow"))
        self._count(kind, 1)

    def _count(self, kind: Kind, count: int, error: int = 0) -> None:
        counts = self._counts
        entry = counts.get(kind)
        if entry is not None:
            entry[0] += count
            entry[1] += error
        elif len(counts) < TRACKED:
            counts[kind] = [count, error]
        else:
            smallest = min(counts, key=lambda k: counts[k][0])
            floor = counts.pop(smallest)[0]
            counts[kind] = [floor + count, floor + error]

    def top(self, n: int = SHOWN) -> list[Count]:
        ranked = sorted(self._counts.items(), key=lambda item: -item[1][0])[:n]
        return [Count(kind, count, error) for kind, (count, error) in ranked]

    @classmethod
    def merged(cls, parts: Iterable[Denies]) -> Denies:
        """Several workers' tallies as one (counts add up; the newest denies of all)."""
        whole = cls()
        recent: list[Deny] = []
        for part in parts:
            whole.total += part.total
            recent += part.recent
            for kind, (count, error) in part._counts.items():
                whole._count(kind, count, error)
        whole.recent.extend(sorted(recent, key=lambda deny: deny.at)[-RECENT:])
        return whole

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the control socket's status answer."""
        return {"total": self.total,
                "recent": [{"at": d.at, **d.kind._asdict(), "rule": d.rule, "reason": d.reason,
                            "enforced": d.enforced} for d in self.recent],
                "top": [{**c.kind._asdict(), "count": c.times, "error": c.error}
                        for c in self.top()]}
