"""Fakes for the procs tests: /proc and cgroup trees on disk, sock_diag, process
events and the kernel's owner record, and Attributors wired to them."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import NamedTuple

import pytest

from nfguard.procs import Attributor
from nfguard.procs.cnproc import ProcEvent
from nfguard.procs.exepath import ExePaths
from nfguard.procs.sockdiag import DiagSocket


def fake_cgroup_tree(root: Path) -> dict[str, int]:
    """A cgroup-v2-looking tree: directories with cgroup.procs / cgroup.controllers."""
    ids = {}
    for rel in ["", "system.slice", "system.slice/nginx.service", "user.slice"]:
        d = root / rel if rel else root
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text("")
        (d / "cgroup.controllers").write_text("")
        ids["/" + rel] = d.stat().st_ino
    return ids


def stat_line(pid: int, comm: str, ppid: int, starttime: int) -> str:
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(starttime)] + ["0"] * 30
    return f"{pid} ({comm}) " + " ".join(fields) + "\n"


def fake_proc(
    root: Path,
    pid: int,
    *,
    exe: str,
    argv: list[str],
    ppid: int,
    starttime: int = 100,
    sockets: dict[int, int] | None = None,
    cgroup: str = "/",
) -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(stat_line(pid, Path(exe).name[:15], ppid, starttime))
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "cgroup").write_text(f"0::{cgroup}\n")
    if (d / "exe").is_symlink():
        (d / "exe").unlink()
    (d / "exe").symlink_to(exe)
    if not (d / "fd" / "0").is_symlink():
        (d / "fd" / "0").symlink_to("/dev/null")
    for fd, ino in (sockets or {}).items():
        (d / "fd" / str(fd)).symlink_to(f"socket:[{ino}]")


class FakeDiag:
    """Stands in for the netlink socket: answers from a dict keyed by the flow tuple."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str, int, str, int], DiagSocket] = {}
        self.fail = False

    def find(self, proto: str, family: int, src: str, sport: int, dst: str, dport: int):
        if self.fail:
            raise OSError(errno.ENOBUFS, "boom")
        return self.answers.get((proto, src, sport, dst, dport))

    def close(self) -> None:
        pass


class FakePaths:
    """Stands in for exepath.ExePaths: every path names its file but those in `impostors`
    (a fake /proc tree cannot show one path and lead to another file)."""

    def __init__(self) -> None:
        self.impostors: set[tuple[int, str]] = set()

    def names_its_file(self, pid: int, path: str) -> bool:
        return (pid, path) not in self.impostors


def make_attributor(tmp_path: Path) -> tuple[Attributor, FakeDiag, Path, Path, dict[str, int]]:
    proc = tmp_path / "proc"
    cg = tmp_path / "cg"
    ids = fake_cgroup_tree(cg)
    diag = FakeDiag()
    attr = Attributor(proc_root=str(proc), cgroup_root=str(cg), diag=diag,  # type: ignore[arg-type]
                      paths=FakePaths())  # type: ignore[arg-type]
    return attr, diag, proc, cg, ids


def diag_answer(diag: FakeDiag, inode: int, cgroup_id: int | None, uid: int | None = None) -> tuple:
    flow = ("tcp", "10.0.0.1", 40000 + inode % 1000, "10.0.0.2", 443)
    diag.answers[flow] = DiagSocket(
        family=socket.AF_INET,
        state=2,
        uid=os.getuid() if uid is None else uid,
        inode=inode,
        cgroup_id=cgroup_id,
        cookie=inode << 8,
    )
    return flow


class FakeExecs:
    """Stands in for owners.ExecTimes: pid → (began, done) of its last exec, boot ns."""

    sees_exec_begin = True

    def __init__(self) -> None:
        self.times: dict[int, tuple[int | None, int | None]] = {}

    def of(self, pid: int) -> tuple[int | None, int | None]:
        return self.times.get(pid, (None, None))


class FakeOwners:
    """Stands in for the eBPF maps: socket cookie → (pid, boot ns at connect), and execs."""

    def __init__(self) -> None:
        self.records: dict[int, tuple[int, int]] = {}
        self.execs = FakeExecs()

    def lookup(self, cookie: int) -> tuple[int, int] | None:
        return self.records.get(cookie)

    def close(self) -> None:
        pass


class Recorded(NamedTuple):
    attr: Attributor
    diag: FakeDiag
    owners: FakeOwners
    events: FakeEvents | bool
    proc: Path
    cg: Path
    ids: dict[str, int]


def recorded_attributor(tmp_path: Path, events: bool, fake_paths: bool = True) -> Recorded:
    """As make_attributor, with the kernel's record of socket owners (FakeOwners) and, if `events`,
    process events (FakeEvents); fake_paths=False checks exe paths in the fake /proc."""
    proc, cg = tmp_path / "proc", tmp_path / "cg"
    ids = fake_cgroup_tree(cg)
    diag, owners = FakeDiag(), FakeOwners()
    ev = FakeEvents() if events else False
    paths = FakePaths() if fake_paths else ExePaths(str(proc))
    attr = Attributor(proc_root=str(proc), cgroup_root=str(cg), diag=diag,  # type: ignore[arg-type]
                      owners=owners, events=ev, paths=paths)  # type: ignore[arg-type]
    return Recorded(attr, diag, owners, ev, proc, cg, ids)


class FakeEvents:
    """Stands in for cnproc.ProcEvents."""

    def __init__(self) -> None:
        self.queue: list[ProcEvent] = []
        self.lost = False
        self.closed = False

    def drain(self) -> list[ProcEvent]:
        out, self.queue = self.queue, []
        return out

    def close(self) -> None:
        self.closed = True


def same_fd_count(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Every kept /proc/PID/fd reports `n` open fds (close + socket keeps the count)."""
    real_stat = os.stat
    monkeypatch.setattr(
        "nfguard.procs.process.os.stat",
        lambda p, *a, **k: (
            os.stat_result((0,) * 6 + (n, 0, 0, 0)) if isinstance(p, int) else real_stat(p, *a, **k)
        ),
    )


def replace_socket(proc: Path, pid: int, fd: int, inode: int) -> None:
    link = proc / str(pid) / "fd" / str(fd)
    link.unlink()
    link.symlink_to(f"socket:[{inode}]")
