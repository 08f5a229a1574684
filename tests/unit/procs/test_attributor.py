"""The Attributor without root, on fake /proc and cgroup trees: the route a lookup
takes, what it trusts, and what it caches."""

from __future__ import annotations

import os
import pwd
import socket
import time
from pathlib import Path

import pytest

from nfguard.procs import UNKNOWN, Attributor, ProcessInfo, entries
from nfguard.procs.cnproc import ProcEvent
from nfguard.procs.process import ProcReader
from tests.unit.procs.fakes import (
    FakeDiag,
    FakeEvents,
    FakePaths,
    diag_answer,
    fake_cgroup_tree,
    fake_proc,
    make_attributor,
    recorded_attributor,
    replace_socket,
    same_fd_count,
)


def test_attributor_cgroup_route_then_cache(tmp_path: Path) -> None:
    attr, diag, proc, cg, ids = make_attributor(tmp_path)
    fake_proc(proc, 1, exe="/usr/lib/systemd/systemd", argv=["/sbin/init"], ppid=0)
    fake_proc(
        proc,
        500,
        exe="/usr/sbin/nginx (deleted)",
        argv=["nginx: worker process"],
        ppid=1,
        sockets={7: 5555},
        cgroup="/system.slice/nginx.service",
    )
    fake_proc(proc, 501, exe="/usr/sbin/nginx", argv=["nginx"], ppid=1, sockets={3: 6666})
    (cg / "system.slice" / "nginx.service" / "cgroup.procs").write_text("501\n500\n")
    flow = diag_answer(diag, 5555, ids["/system.slice/nginx.service"])

    info = attr.lookup(flow[0], socket.AF_INET, *flow[1:])
    assert info == ProcessInfo(
        uid=os.getuid(),
        user=info.user,
        inode=5555,
        pid=500,
        exe="/usr/sbin/nginx",
        exe_deleted=True,
        exe_mismatch=True,  # its path no longer names the file it runs
        unproven=True,  # found holding the socket: no record says it made it
        cmdline=("nginx: worker process",),
        ppid=1,
        parent_exe="/usr/lib/systemd/systemd",
        cgroup="/system.slice/nginx.service",
        unit="nginx.service",
    )
    s = attr.stats()
    assert (s["lookups"], s["hits"], s["misses"], s["fallbacks"], s["failures"]) == (1, 0, 1, 0, 0)
    # the other worker's socket was learned on the way (501 is read first: newest pid)
    flow2 = diag_answer(diag, 6666, ids["/system.slice/nginx.service"])
    assert attr.lookup(flow2[0], 4, *flow2[1:]).pid == 501
    assert attr.lookup(flow[0], 4, *flow[1:]).pid == 500
    assert attr.stats()["hits"] == 2


@pytest.mark.parametrize("events", [False, True])
def test_attributor_trusts_the_kernel_record_only_while_its_process_lives(
        tmp_path: Path, events: bool) -> None:
    attr, diag, owners, _ev, proc, cg, ids = recorded_attributor(tmp_path, events, fake_paths=False)
    hz = os.sysconf("SC_CLK_TCK")
    second = 1_000_000_000
    fake_proc(proc, 700, exe="/usr/bin/client", argv=["client"], ppid=1, sockets={5: 71},
               starttime=10 * hz)
    fake_proc(proc, 702, exe="/usr/bin/holder", argv=["holder"], ppid=1, sockets={6: 72},
               starttime=10 * hz)
    (cg / "user.slice" / "cgroup.procs").write_text("700\n702\n")
    owned = diag_answer(diag, 71, ids["/user.slice"])
    owners.records[71 << 8] = (700, 11 * second)  # connected after the process started
    info = attr.lookup(owned[0], 4, *owned[1:])
    assert (info.pid, info.exe, info.cmdline, info.inode) == (700, "/usr/bin/client",
                                                              ("client",), 71)
    assert info.cgroup == "/user.slice"
    st = attr.stats()
    assert (st["recorded"], st["misses"], st["pids_probed"]) == (1, 0, 0)
    # a record older than the process now at its pid: that pid was reused; the socket's
    # holder (702) is not who made it either: the socket alone is known
    reused = diag_answer(diag, 72, ids["/user.slice"])
    owners.records[72 << 8] = (700, 5 * second)
    info = attr.lookup(reused[0], 4, *reused[1:])
    assert (info.pid, info.exe, info.uid, info.cgroup) == (None, None, os.getuid(), "/user.slice")
    # a record of a process that is gone: the same
    owners.records[72 << 8] = (799, 11 * second)
    assert attr.lookup(reused[0], 4, *reused[1:]).pid is None
    st = attr.stats()
    assert (st["recorded"], st["refused"]) == (1, 2)
    assert st["misses"] + st["hits"] + st["pids_probed"] == 0, "never a search"
    # no record at all (a socket connected before the engine started): its holder, unproven
    (proc / "702" / "fd" / "7").symlink_to("socket:[73]")
    unrecorded = diag_answer(diag, 73, ids["/user.slice"])
    info = attr.lookup(unrecorded[0], 4, *unrecorded[1:])
    assert (info.pid, info.exe, info.unproven) == (702, "/usr/bin/holder", True)
    assert attr.stats()["unrecorded"] == 1
    assert attr.lookup(owned[0], 4, *owned[1:]).unproven is False


@pytest.mark.parametrize("events", [False, True])
def test_attributor_refuses_a_process_that_exec_d_after_it_connected(
        tmp_path: Path, events: bool) -> None:
    """The record names the process that connected; an exec since (begun or done, seen by
    the kernel's tracepoints or, without them, the process connector) means the program
    read now did not make the flow. An exec done before the connect is that program's."""
    attr, diag, owners, ev, proc, _cg, ids = recorded_attributor(tmp_path, events)
    hz = os.sysconf("SC_CLK_TCK")
    second = 1_000_000_000
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    fake_proc(proc, 700, exe="/usr/bin/curl", argv=["curl"], ppid=1, sockets={5: 71},
               starttime=1 * hz)
    flow = diag_answer(diag, 71, ids["/user.slice"])
    connected = now - 5 * second
    owners.records[71 << 8] = (700, connected)
    execs = owners.execs.times
    execs[700] = (connected - second, connected - second + 1000)  # curl exec'd, then connected
    assert attr.lookup(flow[0], 4, *flow[1:]).exe == "/usr/bin/curl"
    for began, done in [(connected + 10, connected + 20),  # exec'd after it connected
                        (connected - 10, connected + 20),  # connected while exec'ing
                        (connected + 10, connected - 900),  # exec'ing now, not done yet
                        (connected - 10, None)]:  # begun, its end unknown
        execs[700] = (began, done)
        info = attr.lookup(flow[0], 4, *flow[1:])
        assert (info.pid, info.exe, info.cmdline) == (None, None, ()), (began, done)
    assert attr.stats()["refused"] == 4
    # only the end of an exec known (kernels before 6.10, or the process connector)
    execs[700] = (None, connected + 20)
    assert attr.lookup(flow[0], 4, *flow[1:]).pid is None
    del execs[700]
    owners.execs = None  # type: ignore[assignment]
    assert attr.lookup(flow[0], 4, *flow[1:]).pid == 700
    if events:
        assert isinstance(ev, FakeEvents)
        mono_now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        ev.queue = [ProcEvent("exec", 700, None, mono_now - 2 * second)]  # 3 s after it
        assert attr.lookup(flow[0], 4, *flow[1:]).pid is None
        assert attr.exec_times == "events"
    else:
        assert attr.exec_times == "none"


def test_attributor_rereads_an_entry_read_before_the_last_exec(tmp_path: Path) -> None:
    """A cached entry read before an exec that ended before the connect describes the old
    program: it is read again, not refused and not believed."""
    attr, diag, owners, _ev, proc, _cg, ids = recorded_attributor(tmp_path, events=False)
    hz = os.sysconf("SC_CLK_TCK")
    fake_proc(proc, 700, exe="/usr/bin/python3", argv=["python3"], ppid=1, sockets={5: 71},
               starttime=1 * hz)
    first = diag_answer(diag, 71, ids["/user.slice"])
    owners.records[71 << 8] = (700, time.clock_gettime_ns(time.CLOCK_BOOTTIME) - 10)
    assert attr.lookup(first[0], 4, *first[1:]).exe == "/usr/bin/python3"
    fake_proc(proc, 700, exe="/usr/bin/curl", argv=["curl"], ppid=1, sockets={6: 72})
    exec_done = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    owners.execs.times[700] = (exec_done - 100, exec_done)
    second = diag_answer(diag, 72, ids["/user.slice"])
    owners.records[72 << 8] = (700, exec_done + 10)
    info = attr.lookup(second[0], 4, *second[1:])
    assert (info.pid, info.exe, info.cmdline) == (700, "/usr/bin/curl", ("curl",))


@pytest.mark.parametrize("sees_exec_begin", [True, False])
def test_attributor_reads_a_recorded_process_s_exe_link_once_a_second(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sees_exec_begin: bool) -> None:
    """Without process events, where the kernel records every exec from its start, a
    recorded flow of a process already read (the same one: its kept fd directory) costs no
    exe link read: an exec since the reading shows in the exec times. The link is still read
    once every LINK_RECHECK_NS, which catches an exec whose record was pushed out of the
    kernel's map; where only an exec's end is recorded, it is read for every flow."""
    attr, diag, owners, _ev, proc, _cg, ids = recorded_attributor(tmp_path, events=False)
    owners.execs.sees_exec_begin = sees_exec_begin  # type: ignore[misc]
    reads: list[int] = []
    exe_link = ProcReader.exe_link
    monkeypatch.setattr(ProcReader, "exe_link",
                        lambda self, pid: reads.append(pid) or exe_link(self, pid))
    hz = os.sysconf("SC_CLK_TCK")
    fake_proc(proc, 700, exe="/usr/bin/wrk", argv=["wrk"], ppid=1, sockets={5: 71, 6: 72},
               starttime=1 * hz)
    connected = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - 10
    flows = [diag_answer(diag, inode, ids["/user.slice"]) for inode in (71, 72)]
    for inode in (71, 72):
        owners.records[inode << 8] = (700, connected)
    assert attr.lookup(flows[0][0], 4, *flows[0][1:]).exe == "/usr/bin/wrk"
    assert attr.lookup(flows[0][0], 4, *flows[0][1:]).exe == "/usr/bin/wrk"  # the fd dir kept
    reads.clear()
    assert attr.lookup(flows[1][0], 4, *flows[1][1:]).exe == "/usr/bin/wrk"
    assert reads.count(700) == (0 if sees_exec_begin else 1)
    # an exec whose record is lost: the link shows it at its next reading
    fake_proc(proc, 700, exe="/usr/bin/curl", argv=["curl"], ppid=1, starttime=1 * hz)
    monkeypatch.setattr(entries, "LINK_RECHECK_NS", 0)
    assert attr.lookup(flows[0][0], 4, *flows[0][1:]).exe == "/usr/bin/curl"


def test_attributor_marks_a_path_that_does_not_name_its_file(tmp_path: Path) -> None:
    """A process whose exe path leads elsewhere (a mount of its own over it) keeps the path
    it shows, marked; a parent's such path is not given at all."""
    attr, diag, proc, cg, ids = make_attributor(tmp_path)
    paths = attr._paths
    assert isinstance(paths, FakePaths)
    fake_proc(proc, 30, exe="/usr/bin/sh", argv=["sh"], ppid=1)
    fake_proc(proc, 31, exe="/usr/bin/curl", argv=["curl"], ppid=30, sockets={3: 3100})
    (cg / "user.slice" / "cgroup.procs").write_text("30\n31\n")
    paths.impostors |= {(31, "/usr/bin/curl"), (30, "/usr/bin/sh")}
    flow = diag_answer(diag, 3100, ids["/user.slice"])
    info = attr.lookup(flow[0], 4, *flow[1:])
    assert (info.pid, info.exe, info.exe_mismatch, info.exe_deleted) == (31, "/usr/bin/curl",
                                                                         True, False)
    assert info.ppid == 30 and info.parent_exe is None


def test_attributor_cache_is_checked(tmp_path: Path) -> None:
    """A cached inode→pid whose fd no longer holds the socket is searched again, and a
    reused pid (other start time, other exe) gets fresh process info."""
    attr, diag, proc, cg, ids = make_attributor(tmp_path)
    fake_proc(proc, 300, exe="/usr/bin/old", argv=["old"], ppid=1, sockets={4: 42}, starttime=10)
    (cg / "user.slice" / "cgroup.procs").write_text("300\n")
    flow = diag_answer(diag, 42, ids["/user.slice"])
    assert attr.lookup(flow[0], 4, *flow[1:]).exe == "/usr/bin/old"
    # pid 300 died; a new process got pid 300 and (somehow) socket 42 at another fd
    (proc / "300" / "fd" / "4").unlink()
    fake_proc(proc, 300, exe="/usr/bin/new", argv=["new"], ppid=1, sockets={9: 42}, starttime=99)
    info = attr.lookup(flow[0], 4, *flow[1:])
    assert (info.pid, info.exe, info.cmdline) == (300, "/usr/bin/new", ("new",))
    assert attr.stats()["misses"] == 2


def test_attributor_fallback_by_uid(tmp_path: Path) -> None:
    """Socket's cgroup does not hold the process (it moved): found by the owner's pids."""
    attr, diag, proc, cg, ids = make_attributor(tmp_path)
    fake_proc(proc, 700, exe="/usr/bin/curl", argv=["curl", "x"], ppid=1, sockets={3: 77})
    (cg / "system.slice" / "cgroup.procs").write_text("")
    flow = diag_answer(diag, 77, ids["/system.slice"])
    info = attr.lookup(flow[0], 4, *flow[1:])
    assert info.pid == 700 and info.cgroup == "/system.slice" and info.unit is None
    assert attr.stats()["fallbacks"] == 1
    # a socket owned by another uid is not looked for among our (test user's) processes
    flow2 = diag_answer(diag, 78, ids["/system.slice"], uid=os.getuid() + 12345)
    fake_proc(proc, 701, exe="/usr/bin/x", argv=["x"], ppid=1, sockets={3: 78})
    info2 = attr.lookup(flow2[0], 4, *flow2[1:])
    assert info2.pid is None and info2.uid == os.getuid() + 12345 and info2.inode == 78
    assert attr.stats()["failures"] == 1


def test_attributor_unknowns_never_raise(tmp_path: Path) -> None:
    attr, diag, _proc, _cg, ids = make_attributor(tmp_path)
    assert attr.lookup("tcp", 4, "10.0.0.1", 1, "10.0.0.2", 2) == UNKNOWN
    # socket known, process gone: uid and cgroup are still reported
    flow = diag_answer(diag, 123, ids["/user.slice"])
    info = attr.lookup(flow[0], 4, *flow[1:])
    assert info.uid == os.getuid() and info.inode == 123 and info.pid is None
    assert info.cgroup == "/user.slice"
    # inode 0 (a socket with no file, e.g. orphaned): uid only
    flow0 = diag_answer(diag, 0, None)
    assert attr.lookup(flow0[0], 4, *flow0[1:]).inode is None
    diag.fail = True
    assert attr.lookup(flow[0], 4, *flow[1:]) == UNKNOWN
    s = attr.stats()
    assert s["errors"] == 1 and s["no_socket"] == 1 and s["lookups"] == 4 and s["failures"] == 4
    # a bad family is a caller bug, but lookup still does not raise
    assert attr.lookup("tcp", 5, "x", 1, "y", 2) == UNKNOWN


def test_attributor_without_a_socket_reports_the_kernels_uid(tmp_path: Path) -> None:
    """A UDP sender that closed its socket before the lookup: the uid the queue gave with
    the packet is the answer, with its user name, and nothing else is made up."""
    attr, diag, _proc, _cg, _ids = make_attributor(tmp_path)
    me = os.getuid()
    name = pwd.getpwuid(me).pw_name
    assert attr.lookup("udp", 4, "10.0.0.1", 1, "10.0.0.2", 53, uid=me) == ProcessInfo(
        uid=me, user=name)
    diag.fail = True  # the lookup itself failing leaves the kernel's word too
    assert attr.lookup("udp", 4, "10.0.0.1", 1, "10.0.0.2", 53, uid=me).uid == me
    assert attr.lookup("udp", 4, "10.0.0.1", 1, "10.0.0.2", 53) == UNKNOWN


def test_attributor_live_members(tmp_path: Path) -> None:
    """With process events, a forked client is found without re-reading cgroup.procs; a
    process that moved in (no event for that) is found after one re-read."""
    proc = tmp_path / "proc"
    cg = tmp_path / "cg"
    ids = fake_cgroup_tree(cg)
    diag, ev = FakeDiag(), FakeEvents()
    attr = Attributor(proc_root=str(proc), cgroup_root=str(cg), diag=diag, events=ev)  # type: ignore[arg-type]
    assert attr.live_members
    nginx = "/system.slice/nginx.service"
    for pid in range(100, 110):
        fake_proc(proc, pid, exe="/usr/sbin/nginx", argv=["nginx"], ppid=1, sockets={3: pid})
    (cg / nginx[1:] / "cgroup.procs").write_text("\n".join(str(p) for p in range(100, 110)))
    f = diag_answer(diag, 105, ids[nginx])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 105
    assert attr.stats()["procs_reads"] == 1
    # worker 101 forks 150 (cgroup.procs file not updated: only the event tells)
    fake_proc(proc, 150, exe="/usr/bin/curl", argv=["curl"], ppid=101, sockets={5: 1500})
    ev.queue = [ProcEvent("fork", 150, 101), ProcEvent("exec", 150)]
    before = attr.stats()["pids_probed"]
    f = diag_answer(diag, 1500, ids[nginx])
    info = attr.lookup(f[0], 4, *f[1:])
    assert info.pid == 150 and info.exe == "/usr/bin/curl"
    s = attr.stats()
    assert s["procs_reads"] == 1 and s["pids_probed"] - before == 1 and s["events"] == 2
    # 170 moved into the cgroup: the live set misses it, one re-read finds it
    fake_proc(proc, 170, exe="/usr/bin/x", argv=["x"], ppid=1, sockets={4: 1700})
    (cg / nginx[1:] / "cgroup.procs").write_text("170\n")
    f = diag_answer(diag, 1700, ids[nginx])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 170
    s = attr.stats()
    assert s["procs_reads"] == 2 and s["fallbacks"] == 0
    # events were lost: memberships are re-read, answers stay right
    ev.lost = True
    (proc / "107" / "fd" / "8").symlink_to("socket:[1070]")
    f = diag_answer(diag, 1070, ids[nginx])
    (cg / nginx[1:] / "cgroup.procs").write_text("107\n")
    assert attr.lookup(f[0], 4, *f[1:]).pid == 107
    assert attr.stats()["procs_reads"] == 3 and not ev.lost
    attr.close()
    assert ev.closed


def test_attributor_unchanged_fd_count_is_never_a_reason_to_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every process's fd count looks unchanged (close + socket keeps it): the pid that holds
    the socket is still found, in the cgroup, without the uid fallback."""
    attr, diag, proc, cg, ids = make_attributor(tmp_path)
    for pid in (200, 201, 202):
        fake_proc(proc, pid, exe="/usr/bin/w", argv=["w"], ppid=1, sockets={3: pid * 10})
    (cg / "user.slice" / "cgroup.procs").write_text("200\n201\n202\n")
    f = diag_answer(diag, 2010, ids["/user.slice"])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 201  # every pid listed once now
    real_stat = os.stat
    monkeypatch.setattr(
        "nfguard.procs.process.os.stat",
        lambda p, *a, **k: (
            os.stat_result((0,) * 6 + (2, 0, 0, 0)) if isinstance(p, int) else real_stat(p, *a, **k)
        ),
    )
    attr._fds.clear()
    for pid in (200, 201, 202):  # listed with count 2 (the fake stat)
        attr._fds.probe(pid, 1)
    (proc / "200" / "fd" / "3").unlink()
    (proc / "200" / "fd" / "3").symlink_to("socket:[777]")
    f = diag_answer(diag, 777, ids["/user.slice"])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 200
    assert attr.stats()["fallbacks"] == 0


def test_attributor_finds_a_busy_client_without_rereading_cgroup_procs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process events: a process that owned a socket lately is checked (its oldest
    sockets first) before cgroup.procs is read again."""
    attr, diag, proc, cg, ids = make_attributor(tmp_path)
    assert not attr.live_members
    pids = range(300, 340)
    for pid in pids:
        fake_proc(proc, pid, exe="/usr/bin/w", argv=["w"], ppid=1, sockets={3: pid * 10})
    fake_proc(proc, 400, exe="/usr/bin/pool", argv=["pool"], ppid=1,
               sockets={fd: 4000 + fd for fd in range(3, 35)})
    (cg / "user.slice" / "cgroup.procs").write_text("\n".join(map(str, [*pids, 400])))
    f = diag_answer(diag, 4034, ids["/user.slice"])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 400
    same_fd_count(monkeypatch, 34)
    before = attr.stats()
    for step, inode in enumerate(range(5000, 5010)):
        replace_socket(proc, 400, 3 + step, inode)  # the oldest connection closes
        f = diag_answer(diag, inode, ids["/user.slice"])
        assert attr.lookup(f[0], 4, *f[1:]).pid == 400
    after = attr.stats()
    assert after["procs_reads"] == before["procs_reads"]
    assert after["pids_probed"] - before["pids_probed"] == 10


def test_attributor_with_events_rereads_a_known_process_only_after_an_exec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With process events, a process found again through the same kept fd directory (a
    new socket found there, or a known one read through it) is taken from the cache
    without a read; its exec event makes the next lookup read it, even of a cached socket."""
    proc, cg = tmp_path / "proc", tmp_path / "cg"
    ids = fake_cgroup_tree(cg)
    diag, ev = FakeDiag(), FakeEvents()
    attr = Attributor(proc_root=str(proc), cgroup_root=str(cg), diag=diag, events=ev)  # type: ignore[arg-type]
    nginx = "/system.slice/nginx.service"
    fake_proc(proc, 100, exe="/usr/sbin/nginx", argv=["nginx"], ppid=1, sockets={3: 1000})
    (cg / nginx[1:] / "cgroup.procs").write_text("100\n")
    f = diag_answer(diag, 1000, ids[nginx])
    assert attr.lookup(f[0], 4, *f[1:]).exe == "/usr/sbin/nginx"
    read: list[int] = []
    real = ProcReader.exe_link
    monkeypatch.setattr(ProcReader, "exe_link",
                        lambda self, pid: read.append(pid) or real(self, pid))
    (proc / "100" / "fd" / "4").symlink_to("socket:[1001]")
    f = diag_answer(diag, 1001, ids[nginx])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 100 and read == []
    hits = attr.stats()["hits"]
    assert attr.lookup(f[0], 4, *f[1:]).pid == 100 and read == []  # the inode cache
    assert attr.stats()["hits"] == hits + 1
    # exec keeps the fds: the cached socket now belongs to another program
    fake_proc(proc, 100, exe="/usr/bin/python3", argv=["python3"], ppid=1)
    ev.queue = [ProcEvent("exec", 100)]
    info = attr.lookup(f[0], 4, *f[1:])
    assert info.exe == "/usr/bin/python3" and info.cmdline == ("python3",) and read[0] == 100
    assert attr.stats()["hits"] == hits + 2


def test_attributor_without_events_sees_an_exec_behind_a_cached_socket(tmp_path: Path) -> None:
    """No process events: a cached socket found again through the kept fd directory is
    still checked against the exe link, so a program exec'd on the same fds is seen."""
    attr, diag, proc, cg, ids = make_attributor(tmp_path)
    assert not attr.live_members
    nginx = "/system.slice/nginx.service"
    fake_proc(proc, 100, exe="/usr/sbin/nginx", argv=["nginx"], ppid=1, sockets={3: 1000})
    (cg / nginx[1:] / "cgroup.procs").write_text("100\n")
    f = diag_answer(diag, 1000, ids[nginx])
    assert attr.lookup(f[0], 4, *f[1:]).exe == "/usr/sbin/nginx"
    assert attr.lookup(f[0], 4, *f[1:]).exe == "/usr/sbin/nginx"
    hits = attr.stats()["hits"]
    fake_proc(proc, 100, exe="/usr/bin/python3", argv=["python3"], ppid=1)
    info = attr.lookup(f[0], 4, *f[1:])
    assert info.exe == "/usr/bin/python3" and info.pid == 100
    assert attr.stats()["hits"] == hits + 1


def test_recorder_without_cgroup_v2_is_off_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "cg").mkdir()
    attr = Attributor(proc_root=str(tmp_path / "proc"), cgroup_root=str(tmp_path / "cg"),
                      diag=FakeDiag(), events=False, owners=True)  # type: ignore[arg-type]
    assert attr.cgroup_root is None
    assert not attr.recorded_owners and attr.owners_error == "no cgroup v2 to attach to"


@pytest.mark.parametrize("events", [False, True])
def test_parent_exe_is_the_program_that_forked_it(tmp_path: Path, events: bool) -> None:
    """A parent that exec'd after forking the flow's process (its payload) did not start
    it as the program it runs now: no parent_exe. Nor does a parent the process was
    reparented to (known from its fork event)."""
    attr, diag, owners, ev, proc, _cg, ids = recorded_attributor(tmp_path, events)
    hz = os.sysconf("SC_CLK_TCK")
    second = 1_000_000_000
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    start = (now - 10 * second) * hz // second  # the child's start tick
    fake_proc(proc, 40, exe="/usr/bin/git", argv=["git"], ppid=1, starttime=1)
    fake_proc(proc, 41, exe="/usr/bin/python3", argv=["python3"], ppid=40, sockets={3: 4100},
               starttime=start)
    flow = diag_answer(diag, 4100, ids["/user.slice"])
    owners.records[4100 << 8] = (41, now - second)

    def parent() -> str | None:
        info = attr.lookup(flow[0], 4, *flow[1:])
        attr._procs.clear()
        assert info.pid == 41
        return info.parent_exe

    assert parent() == "/usr/bin/git"
    owners.execs.times[40] = (now - 20 * second, now - 20 * second + 5)  # git, then forked
    assert parent() == "/usr/bin/git"
    owners.execs.times[40] = (now - 5 * second, now - 5 * second + 5)  # forked, then git
    assert parent() is None
    if events:
        assert isinstance(ev, FakeEvents)
        del owners.execs.times[40]
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        ev.queue = [ProcEvent("fork", 41, 39, mono - 10 * second)]  # 39 forked it, exited
        assert parent() is None
        ev.queue = [ProcEvent("fork", 41, 40, mono - 10 * second)]
        assert parent() == "/usr/bin/git"
