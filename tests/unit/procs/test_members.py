"""Cgroup memberships kept current by process events, and bounded."""

from __future__ import annotations

from nfguard.procs.cnproc import ProcEvent
from nfguard.procs.members import Group, Members


def test_members_follow_forks_execs_exits() -> None:
    m = Members()
    g = m.load("/app.service", [100, 300, 200])
    assert list(g.order()) == [300, 200, 100]
    exited = m.apply(
        [
            ProcEvent("fork", 400, 100),  # child of a member: joins, goes first
            ProcEvent("fork", 500, 999),  # parent not tracked: ignored
            ProcEvent("exec", 200),  # exec'd lately: before the rest
            ProcEvent("exit", 300),
        ]
    )
    assert exited == [300]
    assert list(g.order()) == [200, 400, 100]
    # a fresh listing keeps the recency learned from events
    g2 = m.load("/app.service", [100, 200, 400, 401])
    assert list(g2.order())[:2] == [200, 400] and set(g2.order()) == {100, 200, 400, 401}
    # pid reused by a fork elsewhere: leaves its old group
    m.load("/other.service", [7])
    m.apply([ProcEvent("fork", 401, 7)])
    assert 401 not in set(g2.order()) and 401 in set(m.get("/other.service").order())
    m.clear()
    assert m.get("/app.service") is None and len(m) == 0


def test_members_bounded() -> None:
    m = Members(max_groups=2, max_pids=5)
    m.load("/a", [1, 2])
    m.load("/b", [3])
    m.load("/c", [4])  # evicts /a
    assert m.get("/a") is None and m.get("/b") is not None
    m.apply([ProcEvent("fork", 9, 1)])  # 1 left with /a: not tracked any more
    assert 9 not in set(m.get("/b").order()) | set(m.get("/c").order())
    m.load("/d", [10, 11, 12, 13, 14])  # over max_pids: everything else forgotten
    assert m.get("/b") is None and set(m.get("/d").order()) == {10, 11, 12, 13, 14}
    g = Group(range(100), recent_cap=3)
    for p in (5, 6, 7, 8):
        g.touch(p)
    assert list(g.order())[:4] == [8, 7, 6, 99]
