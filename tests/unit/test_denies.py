"""The last and most frequent denies `nfguard status` shows, in bounded memory."""

from __future__ import annotations

import pickle
from typing import Any

from nfguard.denies import RECENT, TRACKED, Denies, Kind


def deny(dest: str, port: int = 443, at: str = "2026-12-07T21:00:00.000Z",
         verdict: str = "deny", client: str = "web") -> dict[str, Any]:
    return {"@timestamp": at, "event": {"action": "deny", "reason": "no_rule_match"},
            "nfguard": {"client": client, "verdict": verdict},
            "destination": {"ip": "198.18.0.9", "port": port, "domain": dest},
            "network": {"transport": "tcp"}, "process": {"executable": "/usr/bin/curl"}}


def test_recent_and_top() -> None:
    denies = Denies()
    for i in range(30):
        denies.add(deny("evil.test", at=f"2026-12-07T21:00:{i:02d}.000Z"))
    denies.add(deny("other.test", verdict="allow"))
    assert denies.total == 31
    assert len(denies.recent) == RECENT
    assert denies.recent[-1].kind.destination == "other.test"
    assert not denies.recent[-1].enforced, "audit mode let it through"
    top = denies.top()
    assert top[0] == (Kind("web", "/usr/bin/curl", "evil.test", 443, "tcp"), 30, 0)
    assert top[1].times == 1


def test_a_flood_of_distinct_destinations_keeps_memory_and_the_top() -> None:
    denies = Denies()
    for i in range(10_000):
        denies.add(deny(f"n{i}.test"))
        if i % 10 == 0:
            denies.add(deny("often.test"))
    assert len(denies._counts) == TRACKED
    top = denies.top(1)[0]
    assert top.kind.destination == "often.test"
    assert top.times - top.error <= 1000 <= top.times, "the true count within the bound"


def test_a_dns_query_counts_by_its_name() -> None:
    event = deny("x")
    event["dns"] = {"question": {"name": "tunnel.evil.test", "type": "TXT"}}
    denies = Denies()
    denies.add(event)
    assert denies.top()[0].kind.destination == "tunnel.evil.test"


def test_workers_tallies_add_up() -> None:
    one, two = Denies(), Denies()
    for i in range(5):
        one.add(deny("a.test", at=f"2026-12-07T21:00:{i:02d}.000Z"))
        two.add(deny("a.test", at=f"2026-12-07T21:01:{i:02d}.000Z"))
    two.add(deny("b.test", at="2026-12-07T21:02:00.000Z"))
    whole = Denies.merged(pickle.loads(pickle.dumps(d)) for d in (one, two))
    assert whole.total == 11
    assert whole.top()[0].times == 10
    assert [d.at[14:19] for d in whole.recent] == [
        *(f"00:0{i}" for i in range(5)), *(f"01:0{i}" for i in range(5)), "02:00"][-RECENT:]
    snapshot = whole.snapshot()
    assert snapshot["top"][0] == {"client": "web", "executable": "/usr/bin/curl",
                                  "destination": "a.test", "port": 443, "transport": "tcp",
                                  "count": 10, "error": 0}
    assert snapshot["recent"][-1]["destination"] == "b.test"
