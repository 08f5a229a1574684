"""cgroup v2: socket cgroup id → cgroup path → member pids, and path → systemd unit.

Why: sock_diag gives the cgroup id of the socket's creator. On cgroup v2 that id is the inode
number of the cgroup's directory, so a walk of the hierarchy (done lazily, redone only when an
unknown id shows up) maps ids to paths, and the cgroup's `cgroup.procs` names the few pids
whose fds are worth reading — instead of every process on the host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

CGROUP2_SUPER_MAGIC_FSTYPE = "cgroup2"


def unit_from_path(path: str | None) -> str | None:
    """The systemd unit of a cgroup path: its last `*.service` or `*.scope` component.

    `/system.slice/nginx.service` → `nginx.service`;
    `/user.slice/user-1000.slice/user@1000.service/app.slice/foo.scope` → `foo.scope`;
    `/` or a path with neither → None.
    """
    if not path:
        return None
    for part in reversed(path.split("/")):
        if part.endswith((".service", ".scope")) and len(part) > len(".scope"):
            return part
    return None


def parse_proc_cgroup(text: str) -> str | None:
    """The cgroup v2 path from /proc/PID/cgroup (the `0::PATH` line), None when absent."""
    for line in text.splitlines():
        if line.startswith("0::"):
            path = line[3:].strip()
            # A process in a cgroup that was removed after it left shows " (deleted)".
            return path.removesuffix(" (deleted)") or "/"
    return None


def parse_procs(text: str | bytes) -> list[int]:
    """`cgroup.procs` content → pids, skipping anything that is not a number."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    return [int(tok) for tok in text.split() if tok.isdigit()]


def parse_mountinfo_cgroup2(text: str) -> str | None:
    """The mount point of the first cgroup2 file system in /proc/self/mountinfo text."""
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        fstype = right.split(" ", 1)[0]
        if fstype == CGROUP2_SUPER_MAGIC_FSTYPE and len(fields) >= 5:
            return fields[4].replace("\\040", " ")
    return None


def find_cgroup2_root(preferred: str = "/sys/fs/cgroup", proc_root: str = "/proc") -> str | None:
    """Where cgroup v2 is mounted: `preferred` on a unified host, `preferred/unified` on a
    hybrid one (systemd's hybrid layout, as on this dev machine), else from mountinfo."""
    for cand in (preferred, os.path.join(preferred, "unified")):
        if os.path.exists(os.path.join(cand, "cgroup.procs")) and os.path.exists(
            os.path.join(cand, "cgroup.controllers")
        ):
            return cand
    try:
        with open(os.path.join(proc_root, "self", "mountinfo"), encoding="utf-8") as f:
            return parse_mountinfo_cgroup2(f.read())
    except OSError:
        return None


def walk_cgroups(root: str) -> Iterator[tuple[int, str]]:
    """(cgroup id, path relative to root as `/a/b`) for every cgroup under root."""
    try:
        yield os.stat(root).st_ino, "/"
    except OSError:
        return
    stack = [(root, "")]
    while stack:
        base, rel = stack.pop()
        try:
            it = os.scandir(base)
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    ino = entry.inode()
                except OSError:
                    continue
                path = f"{rel}/{entry.name}"
                yield ino, path
                stack.append((entry.path, path))


class CgroupMap:
    """cgroup id → path, built on first use and rebuilt when an unknown id shows up.

    Ids are never reused (64-bit counter), so an id still unknown after a walk that started
    after its socket was seen belongs to a removed cgroup: remember it so that it does not
    cause a walk per flow.
    """

    def __init__(self, root: str | None, *, negative_cap: int = 4096) -> None:
        self.root = root
        self._by_id: dict[int, str] = {}
        self._built = False
        self._negative: set[int] = set()
        self._negative_cap = negative_cap
        self.walks = 0

    def refresh(self) -> None:
        if self.root is None:
            return
        self._by_id = dict(walk_cgroups(self.root))
        self._built = True
        self.walks += 1

    def path(self, cgroup_id: int | None) -> str | None:
        """The path of a cgroup id, or None when it is unknown or the cgroup is gone."""
        if cgroup_id is None or self.root is None:
            return None
        path = self._by_id.get(cgroup_id)
        if path is not None:
            return path
        if cgroup_id in self._negative:
            return None
        self.refresh()
        path = self._by_id.get(cgroup_id)
        if path is None:
            if len(self._negative) >= self._negative_cap:
                self._negative.clear()
            self._negative.add(cgroup_id)
        return path

    def forget(self, cgroup_id: int) -> None:
        """Drop a mapping found stale (its directory vanished), so the next use rewalks."""
        self._by_id.pop(cgroup_id, None)

    def procs(self, path: str) -> list[int] | None:
        """Pids in the cgroup at `path`; None when the cgroup is gone."""
        if self.root is None:
            return None
        full = self.root if path == "/" else self.root + path
        try:
            fd = os.open(os.path.join(full, "cgroup.procs"), os.O_RDONLY)
        except OSError:
            return None
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        return parse_procs(b"".join(chunks))
