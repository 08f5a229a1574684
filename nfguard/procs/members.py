"""Which pids are in which cgroup, and which of them started or exec'd last. No I/O.

Why: `cgroup.procs` of a big cgroup costs ~150 µs to read and parse, too much per flow.
Read once, a cgroup's pid set is then kept current from process events (cnproc): a forked
child starts in its parent's cgroup, an exit leaves. Moves between cgroups are not
reported, so the set is a shortlist, never proof: the attributor re-reads `cgroup.procs`
when the shortlist does not hold the socket, and checks every answer against the fd link.

Order matters more than the set: the processes that forked or exec'd most recently are
the likeliest owners of a brand-new socket (short-lived clients), so they come first,
then recent owners of sockets, then the rest newest pid first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from nfguard.procs.cnproc import ProcEvent


class Group:
    """One cgroup's pids, with the most recently started / exec'd / seen-owning last."""

    __slots__ = ("_sorted", "pids", "recent", "recent_cap")

    def __init__(self, pids: Iterable[int], recent_cap: int = 64) -> None:
        self.pids: set[int] = set(pids)
        self.recent: OrderedDict[int, None] = OrderedDict()
        self.recent_cap = recent_cap
        self._sorted: list[int] | None = None

    def touch(self, pid: int) -> None:
        """pid just forked, exec'd or was found owning a socket: try it early."""
        self.recent[pid] = None
        self.recent.move_to_end(pid)
        if len(self.recent) > self.recent_cap:
            self.recent.popitem(last=False)

    def add(self, pid: int) -> None:
        if pid not in self.pids:
            self.pids.add(pid)
            self._sorted = None

    def discard(self, pid: int) -> None:
        if pid in self.pids:
            self.pids.discard(pid)
            self._sorted = None
        self.recent.pop(pid, None)

    def recent_first(self) -> list[int]:
        """The recently started / exec'd / socket-owning members, newest first."""
        return [p for p in reversed(self.recent) if p in self.pids]

    def order(self) -> Iterator[int]:
        """Recent first (newest first), then every other member, highest pid first.
        Lazy: a caller that stops at the first hit pays for what it read."""
        head = self.recent_first()
        yield from head
        if self._sorted is None:
            self._sorted = sorted(self.pids, reverse=True)
        skip = set(head)
        for p in self._sorted:
            if p not in skip and p in self.pids:
                yield p


class Members:
    """cgroup path → Group for the cgroups flows were seen from, kept live by events.

    Bounded: at most `max_groups` cgroups, `max_pids` tracked pids in all (beyond that
    everything is forgotten and re-read on demand), `recent_cap` pids of global recency.
    """

    def __init__(self, max_groups: int = 512, max_pids: int = 262144, recent_cap: int = 256):
        self.max_groups = max_groups
        self.max_pids = max_pids
        self._groups: OrderedDict[str, Group] = OrderedDict()
        self._where: dict[int, str] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._recent_cap = recent_cap

    def __len__(self) -> int:
        return len(self._groups)

    def get(self, path: str) -> Group | None:
        g = self._groups.get(path)
        if g is not None:
            self._groups.move_to_end(path)
        return g

    def load(self, path: str, pids: Iterable[int]) -> Group:
        """Replace what is known of `path` with a fresh `cgroup.procs` listing. Pids that
        forked or exec'd lately (seen in events, in any cgroup) go first."""
        old = self._groups.pop(path, None)
        if old is not None:
            for p in old.pids:
                if self._where.get(p) == path:
                    del self._where[p]
        g = Group(pids)
        for p in self._recent:  # oldest first, so the newest ends up last (= first tried)
            if p in g.pids:
                g.touch(p)
        if old is not None:
            for p in old.recent:
                if p in g.pids:
                    g.touch(p)
        if len(self._where) + len(g.pids) > self.max_pids:
            self.clear()
        self._groups[path] = g
        for p in g.pids:
            self._where[p] = path
        while len(self._groups) > self.max_groups:
            gone_path, gone = self._groups.popitem(last=False)
            for p in gone.pids:
                if self._where.get(p) == gone_path:
                    del self._where[p]
        return g

    def recent(self) -> list[int]:
        """Pids that forked or exec'd lately, newest first, whatever their cgroup."""
        return list(reversed(self._recent))

    def clear(self) -> None:
        """Forget all memberships (events were lost: nothing cached can be trusted)."""
        self._groups.clear()
        self._where.clear()

    def _touch_recent(self, pid: int) -> None:
        self._recent[pid] = None
        self._recent.move_to_end(pid)
        if len(self._recent) > self._recent_cap:
            self._recent.popitem(last=False)

    def apply(self, events: Iterable[ProcEvent]) -> list[int]:
        """Fold process events in; returns the pids that exited (for other caches)."""
        exited: list[int] = []
        for ev in events:
            if ev.kind == "exit":
                exited.append(ev.pid)
                self._recent.pop(ev.pid, None)
                path = self._where.pop(ev.pid, None)
                g = self._groups.get(path) if path is not None else None
                if g is not None:
                    g.discard(ev.pid)
                continue
            self._touch_recent(ev.pid)
            if ev.kind == "fork":
                # a fork may reuse the pid of a process whose exit we have not folded yet
                stale = self._where.pop(ev.pid, None)
                if stale is not None and (sg := self._groups.get(stale)) is not None:
                    sg.discard(ev.pid)
                path = self._where.get(ev.parent) if ev.parent is not None else None
                if path is not None and (g := self._groups.get(path)) is not None:
                    if len(self._where) >= self.max_pids:
                        self.clear()
                        continue
                    g.add(ev.pid)
                    g.touch(ev.pid)
                    self._where[ev.pid] = path
            else:  # exec
                path = self._where.get(ev.pid)
                if path is not None and (g := self._groups.get(path)) is not None:
                    g.touch(ev.pid)
        return exited
