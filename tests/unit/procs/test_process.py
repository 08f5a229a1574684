"""/proc parsing, and finding a socket through kept fd directories, on a fake tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nfguard.procs.process import (
    FOUND,
    GONE,
    MISS,
    PARTIAL,
    UNCHANGED,
    FdDirs,
    ProcReader,
    parse_cmdline,
    parse_socket_link,
    parse_stat,
    parse_status_gids,
    split_deleted,
)
from tests.unit.procs.fakes import fake_proc, replace_socket, same_fd_count


def test_parse_stat_weird_comm() -> None:
    fields = " ".join(str(i) for i in range(4, 53))  # fields 4..52; field 22 → "22"
    data = f"1234 (a) b (c) S {fields}\n".encode()
    st = parse_stat(data)
    assert st is not None
    assert st.comm == "a) b (c" and st.state == "S" and st.ppid == 4 and st.starttime == 22
    assert parse_stat(b"garbage") is None
    assert parse_stat(b"1 (x) S 1 2") is None


def test_parse_cmdline_and_links() -> None:
    assert parse_cmdline(b"/usr/bin/curl\0-s\0http://x/\0") == ("/usr/bin/curl", "-s", "http://x/")
    assert parse_cmdline(b"nginx: worker process") == ("nginx: worker process",)
    assert parse_cmdline(b"") == ()
    assert split_deleted("/usr/bin/x (deleted)") == ("/usr/bin/x", True)
    assert split_deleted("/usr/bin/x") == ("/usr/bin/x", False)
    assert parse_socket_link("socket:[123]") == 123
    assert parse_socket_link("pipe:[123]") is None
    assert parse_socket_link("socket:[x]") is None


def test_proc_reader_finds_socket_and_learns(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 10, exe="/usr/bin/a", argv=["a"], ppid=1, sockets={3: 111, 4: 222})
    fake_proc(proc, 20, exe="/usr/bin/b", argv=["b"], ppid=1, sockets={5: 333})
    r = ProcReader(str(proc))
    learned: dict[int, tuple[int, int]] = {}
    res = r.find_socket([10, 20, 99], 333, lambda i, p, f: learned.__setitem__(i, (p, f)))
    assert res == (20, 5, 2)
    assert learned == {111: (10, 3), 222: (10, 4)}
    assert r.find_socket([10], 333) is None
    d = FdDirs(str(proc))
    assert d.holds(20, 5, 333) and not d.holds(20, 5, 334) and not d.holds(99, 1, 1)
    assert r.stat(99) is None and r.exe_link(99) is None and r.cmdline(99) == ()


def test_fd_dirs_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 10, exe="/usr/bin/a", argv=["a"], ppid=1, sockets={3: 111, 4: 222})
    # the fd count a kept /proc/PID/fd reports (st_size), as the test says
    count = {"n": 3}
    real_stat = os.stat

    def fake_stat(p, *a, **k):  # type: ignore[no-untyped-def]
        if isinstance(p, int):
            return os.stat_result((0,) * 6 + (count["n"], 0, 0, 0))
        return real_stat(p, *a, **k)

    monkeypatch.setattr("nfguard.procs.process.os.stat", fake_stat)
    d = FdDirs(str(proc))
    learned: dict[int, tuple[int, int]] = {}
    learn = lambda i, p, f: learned.__setitem__(i, (p, f))  # noqa: E731
    assert d.probe(10, 222, learn) == (FOUND, 4)  # highest fd first: nothing learned yet
    assert d.probe(10, 999, learn) == (PARTIAL, None)  # only fds not read before
    assert learned == {111: (10, 3)}
    assert d.probe(10, 999) == (UNCHANGED, None)  # same count as listed: put off
    assert d.probe(10, 999, full=True) == (MISS, None)
    (proc / "10" / "fd" / "9").symlink_to("socket:[333]")
    count["n"] = 4
    assert d.probe(10, 333) == (FOUND, 9)
    assert d.probe(99, 1) == (GONE, None) and len(d) == 1
    # close + socket keeps the count: put off, and a full read still finds it
    assert d.probe(10, 1, full=True) == (MISS, None)
    (proc / "10" / "fd" / "3").unlink()
    (proc / "10" / "fd" / "3").symlink_to("socket:[444]")
    assert d.probe(10, 444) == (UNCHANGED, None)
    assert d.probe(10, 444, full=True) == (FOUND, 3)
    d.clear()
    assert len(d) == 0


def test_parse_status_gids() -> None:
    status = (b"Name:\tcurl\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t1000\t1000\t1000\n"
              b"Groups:\t4 24 1000 \n")
    assert parse_status_gids(status) == (1000, 4, 24)
    assert parse_status_gids(b"Name:\tx\n") == ()


def test_fd_dirs_hint_reads_the_oldest_sockets_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy client replaces its oldest connection on the fd just freed: the hint finds the
    new socket there with one readlink, without listing the directory."""
    proc = tmp_path / "proc"
    # the oldest socket on the lowest fd: a listing (highest fd first) must order by inode
    fake_proc(proc, 10, exe="/usr/bin/a", argv=["a"], ppid=1,
               sockets={3: 200, 4: 300, 5: 400, 6: 500})
    same_fd_count(monkeypatch, 4)
    d = FdDirs(str(proc))
    assert d.probe(10, 999) == (MISS, None)  # listed once: 200 (fd 3) is the oldest
    replace_socket(proc, 10, 3, 600)
    listdir = os.listdir
    monkeypatch.setattr("nfguard.procs.process.os.listdir", lambda *a: pytest.fail("listed"))
    assert d.probe(10, 600, hint=1) == (FOUND, 3)
    # 600 is now the newest: the next oldest is 300 on fd 4, then 400 on fd 5
    replace_socket(proc, 10, 5, 700)
    assert d.probe(10, 700, hint=1) == (UNCHANGED, None)  # fd 4 read, not it: put off
    assert d.probe(10, 700, hint=2) == (FOUND, 5)
    monkeypatch.setattr("nfguard.procs.process.os.listdir", listdir)
    replace_socket(proc, 10, 6, 800)
    assert d.probe(10, 800, full=True) == (FOUND, 6)
