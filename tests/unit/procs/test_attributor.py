"""Attribution without root: netlink bytes, cgroup paths, /proc parsing on a fake tree."""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import socket
import struct
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfguard.lru import LRU, Memo
from nfguard.procs import UNKNOWN, Attributor, ProcessInfo
from nfguard.procs.cgroups import (
    CgroupMap,
    find_cgroup2_root,
    parse_mountinfo_cgroup2,
    parse_proc_cgroup,
    parse_procs,
    unit_from_path,
    walk_cgroups,
)
from nfguard.procs.cnproc import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    ProcEvent,
    build_subscribe,
    parse_events,
)
from nfguard.procs.exehash import ExeHashes
from nfguard.procs.exepath import ExePaths
from nfguard.procs.members import Group, Members
from nfguard.procs.owners import exec_program, image_unchanged, started_before
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
from nfguard.procs.sockdiag import (
    INET_DIAG_CGROUP_ID,
    INET_DIAG_NOCOOKIE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    REQ_LEN,
    SOCK_DIAG_BY_FAMILY,
    DiagSocket,
    SockDiagError,
    build_request,
    parse_diag_msg,
    parse_response,
    query_tuple,
)

# ---------------------------------------------------------------------------- netlink bytes


def test_request_layout_v4_tcp() -> None:
    req = build_request("tcp", socket.AF_INET, "10.1.2.3", 40000, "93.184.216.34", 443, seq=7)
    assert len(req) == REQ_LEN == 72
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", req)
    assert (length, kind, flags, seq, pid) == (72, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 7, 0)
    fam, proto, ext, pad, states = struct.unpack_from("=BBBBI", req, 16)
    assert (fam, proto, ext, pad, states) == (socket.AF_INET, 6, 0, 0, 0xFFFFFFFF)
    sport, dport = struct.unpack_from("!HH", req, 24)
    assert (sport, dport) == (40000, 443)
    assert req[28:32] == bytes([10, 1, 2, 3]) and req[32:44] == b"\0" * 12
    assert req[44:48] == bytes([93, 184, 216, 34])
    ifidx, c0, c1 = struct.unpack_from("=III", req, 60)
    assert (ifidx, c0, c1) == (0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)


def test_request_v6_udp() -> None:
    req = build_request("udp", socket.AF_INET6, "2001:db8::1", 5353, "::1", 53)
    assert req[17] == socket.IPPROTO_UDP
    assert req[28:44] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert req[44:60] == socket.inet_pton(socket.AF_INET6, "::1")


def test_query_tuple_udp_is_reversed_tcp_is_not() -> None:
    assert query_tuple("tcp", "10.0.0.1", 1000, "10.0.0.2", 80) == (
        "10.0.0.1",
        1000,
        "10.0.0.2",
        80,
    )
    assert query_tuple("udp", "10.0.0.1", 1000, "10.0.0.2", 53) == (
        "10.0.0.2",
        53,
        "10.0.0.1",
        1000,
    )


def _rta(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _diag_answer(
    family: int,
    src: str,
    sport: int,
    dst: str,
    dport: int,
    *,
    uid: int,
    inode: int,
    cgroup_id: int | None,
    seq: int = 1,
    extra_attrs: bytes = b"",
    cookie: int = 0x5678_0000_1234,
) -> bytes:
    body = struct.pack("=BBBB", family, 2, 0, 0)
    body += struct.pack(
        "!HH16s16s",
        sport,
        dport,
        socket.inet_pton(family, src).ljust(16, b"\0"),
        socket.inet_pton(family, dst).ljust(16, b"\0"),
    )
    body += struct.pack("=III", 0, cookie & 0xFFFFFFFF, cookie >> 32)
    body += struct.pack("=IIIII", 0, 0, 0, uid, inode)
    body += extra_attrs
    if cgroup_id is not None:
        body += _rta(INET_DIAG_CGROUP_ID, struct.pack("=Q", cgroup_id))
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, 0, seq, 0) + body


def _nl_error(err: int, seq: int = 1) -> bytes:
    body = struct.pack("=i", err) + b"\0" * 16
    return struct.pack("=IHHII", 16 + len(body), NLMSG_ERROR, 0, seq, 0) + body


def test_parse_answer_v4_with_cgroup_and_odd_attrs() -> None:
    # an attribute of 1 byte payload (padded) before the cgroup id must not shift parsing
    data = _diag_answer(
        socket.AF_INET,
        "10.1.2.3",
        40000,
        "1.1.1.1",
        443,
        uid=1000,
        inode=424242,
        cgroup_id=(1 << 40) + 5,
        extra_attrs=_rta(8, b"\x01"),
    )
    got = parse_response(data, seq=1)
    assert got == DiagSocket(
        family=socket.AF_INET,
        state=2,
        uid=1000,
        inode=424242,
        cgroup_id=(1 << 40) + 5,
        cookie=0x5678_0000_1234,
    )


def test_parse_answer_v6_without_cgroup() -> None:
    data = _diag_answer(
        socket.AF_INET6, "::ffff:127.0.0.1", 1, "::1", 2, uid=0, inode=9, cgroup_id=None
    )
    got = parse_response(data)
    assert got is not None
    assert got.family == socket.AF_INET6 and got.cgroup_id is None and got.inode == 9


def test_parse_answer_skips_other_sequence_numbers() -> None:
    stale = _diag_answer(
        socket.AF_INET, "1.1.1.1", 1, "2.2.2.2", 2, uid=1, inode=1, cgroup_id=1, seq=5
    )
    fresh = _diag_answer(
        socket.AF_INET, "3.3.3.3", 3, "4.4.4.4", 4, uid=2, inode=2, cgroup_id=1, seq=6
    )
    got = parse_response(stale + fresh, seq=6)
    assert got is not None and got.inode == 2
    assert parse_response(stale, seq=6) is None


@pytest.mark.parametrize("err", [-errno.ENOENT, -errno.ESRCH, 0])
def test_no_such_socket_is_none(err: int) -> None:
    assert parse_response(_nl_error(err)) is None


def test_done_is_none() -> None:
    assert parse_response(struct.pack("=IHHII", 20, NLMSG_DONE, 0, 1, 0) + b"\0" * 4) is None


def test_other_errors_raise() -> None:
    with pytest.raises(SockDiagError):
        parse_response(_nl_error(-errno.EPERM))


def test_truncated_messages_raise() -> None:
    data = _diag_answer(socket.AF_INET, "1.1.1.1", 1, "2.2.2.2", 2, uid=1, inode=1, cgroup_id=1)
    with pytest.raises(SockDiagError):
        parse_response(data[:40])
    with pytest.raises(SockDiagError):
        parse_diag_msg(data[16:60])


def test_truncated_attribute_is_dropped() -> None:
    cut = struct.pack("=HH", 12, INET_DIAG_CGROUP_ID) + b"\x01\x02"  # says 12, holds 6
    data = _diag_answer(socket.AF_INET, "1.1.1.1", 1, "2.2.2.2", 2, uid=1, inode=7,
                        cgroup_id=None, extra_attrs=_rta(5, b"\x07") + cut)
    got = parse_response(data)
    assert got is not None and got.inode == 7 and got.cgroup_id is None


_ADDRESSES = {socket.AF_INET: st.ip_addresses(v=4).map(str),
              socket.AF_INET6: st.ip_addresses(v=6).map(str)}


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([socket.AF_INET, socket.AF_INET6]).flatmap(lambda family: st.tuples(
    st.just(family), _ADDRESSES[family], st.integers(0, 65535), _ADDRESSES[family],
    st.integers(0, 65535), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.lists(st.tuples(st.integers(1, 20), st.binary(max_size=9)), max_size=3),
    st.integers(0, 2**64 - 1))))
def test_answers_parse_back_to_what_was_packed(case: tuple) -> None:
    family, src, sport, dst, dport, uid, inode, cgroup_id, others, cookie = case
    extra = b"".join(_rta(kind, payload) for kind, payload in others)
    data = _diag_answer(family, src, sport, dst, dport, uid=uid, inode=inode,
                        cgroup_id=cgroup_id, extra_attrs=extra, seq=9, cookie=cookie)
    got = parse_response(data, seq=9)
    assert got is not None
    assert got == DiagSocket(family, 2, uid, inode, cgroup_id, cookie)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 120), st.binary(max_size=8))
def test_any_netlink_bytes_give_an_answer_none_or_sockdiag_error(
        data: bytes, at: int, patch: bytes) -> None:
    """Arbitrary bytes, and a real answer with bytes overwritten anywhere."""
    answer = _diag_answer(socket.AF_INET, "10.0.0.1", 1, "10.0.0.2", 2, uid=1, inode=2,
                          cgroup_id=3)
    mutated = answer[:at] + patch + answer[at + len(patch):]
    for blob in (data, mutated):
        try:
            got = parse_response(blob, seq=1)
        except SockDiagError:
            continue
        assert got is None or isinstance(got, DiagSocket)


# --------------------------------------------------------------------------------- cgroups


@pytest.mark.parametrize(
    ("path", "unit"),
    [
        ("/system.slice/nginx.service", "nginx.service"),
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo-1.scope",
            "app-foo-1.scope",
        ),
        ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
        ("/system.slice/docker-ab12.scope/inner", "docker-ab12.scope"),
        ("/", None),
        ("/system.slice", None),
        ("/kubepods/pod1/abc", None),
        (None, None),
        ("/.scope", None),
    ],
)
def test_unit_from_path(path: str | None, unit: str | None) -> None:
    assert unit_from_path(path) == unit


def test_parse_proc_cgroup_hybrid_and_unified() -> None:
    hybrid = "9:name=systemd:/x\n4:memory:/y\n0::/system.slice/sshd.service\n"
    assert parse_proc_cgroup(hybrid) == "/system.slice/sshd.service"
    assert parse_proc_cgroup("0::/\n") == "/"
    assert parse_proc_cgroup("0::/gone (deleted)\n") == "/gone"
    assert parse_proc_cgroup("4:memory:/y\n") is None


def test_parse_procs() -> None:
    assert parse_procs(b"1\n22\n333\n") == [1, 22, 333]
    assert parse_procs("") == []


def test_parse_mountinfo() -> None:
    text = (
        "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
    )
    assert parse_mountinfo_cgroup2(text) == "/sys/fs/cgroup/unified"
    assert parse_mountinfo_cgroup2(text.splitlines()[0]) is None


def _fake_cgroup_tree(root: Path) -> dict[str, int]:
    """A cgroup-v2-looking tree: directories with cgroup.procs / cgroup.controllers."""
    ids = {}
    for rel in ["", "system.slice", "system.slice/nginx.service", "user.slice"]:
        d = root / rel if rel else root
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text("")
        (d / "cgroup.controllers").write_text("")
        ids["/" + rel] = d.stat().st_ino
    return ids


def test_walk_and_map(tmp_path: Path) -> None:
    ids = _fake_cgroup_tree(tmp_path / "cg")
    walked = dict(walk_cgroups(str(tmp_path / "cg")))
    assert {path: ino for ino, path in walked.items()} == ids
    m = CgroupMap(str(tmp_path / "cg"))
    assert m.path(ids["/system.slice/nginx.service"]) == "/system.slice/nginx.service"
    assert m.walks == 1
    # a cgroup made later is found by a rewalk on miss
    new = tmp_path / "cg" / "system.slice" / "new.service"
    new.mkdir()
    assert m.path(new.stat().st_ino) == "/system.slice/new.service"
    assert m.walks == 2
    # an unknown id costs one walk, then is remembered as gone
    assert m.path(999_999_999) is None and m.walks == 3
    assert m.path(999_999_999) is None and m.walks == 3


def test_find_cgroup2_root_hybrid(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    for f in ("cgroup.procs", "cgroup.controllers"):
        (tmp_path / "unified" / f).write_text("")
    assert find_cgroup2_root(str(tmp_path), str(tmp_path / "noproc")) == str(tmp_path / "unified")
    (tmp_path / "cgroup.procs").write_text("")
    (tmp_path / "cgroup.controllers").write_text("")
    assert find_cgroup2_root(str(tmp_path)) == str(tmp_path)


# ------------------------------------------------------------------------------------ /proc


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


def _stat_line(pid: int, comm: str, ppid: int, starttime: int) -> str:
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(starttime)] + ["0"] * 30
    return f"{pid} ({comm}) " + " ".join(fields) + "\n"


def _fake_proc(
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
    (d / "stat").write_text(_stat_line(pid, Path(exe).name[:15], ppid, starttime))
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "cgroup").write_text(f"0::{cgroup}\n")
    if (d / "exe").is_symlink():
        (d / "exe").unlink()
    (d / "exe").symlink_to(exe)
    if not (d / "fd" / "0").is_symlink():
        (d / "fd" / "0").symlink_to("/dev/null")
    for fd, ino in (sockets or {}).items():
        (d / "fd" / str(fd)).symlink_to(f"socket:[{ino}]")


def test_proc_reader_finds_socket_and_learns(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _fake_proc(proc, 10, exe="/usr/bin/a", argv=["a"], ppid=1, sockets={3: 111, 4: 222})
    _fake_proc(proc, 20, exe="/usr/bin/b", argv=["b"], ppid=1, sockets={5: 333})
    r = ProcReader(str(proc))
    learned: dict[int, tuple[int, int]] = {}
    res = r.find_socket([10, 20, 99], 333, lambda i, p, f: learned.__setitem__(i, (p, f)))
    assert res == (20, 5, 2)
    assert learned == {111: (10, 3), 222: (10, 4)}
    assert r.find_socket([10], 333) is None
    d = FdDirs(str(proc))
    assert d.holds(20, 5, 333) and not d.holds(20, 5, 334) and not d.holds(99, 1, 1)
    assert r.stat(99) is None and r.exe_link(99) is None and r.cmdline(99) == ()


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


def _setup(tmp_path: Path) -> tuple[Attributor, FakeDiag, Path, Path, dict[str, int]]:
    proc = tmp_path / "proc"
    cg = tmp_path / "cg"
    ids = _fake_cgroup_tree(cg)
    diag = FakeDiag()
    attr = Attributor(proc_root=str(proc), cgroup_root=str(cg), diag=diag,  # type: ignore[arg-type]
                      paths=FakePaths())  # type: ignore[arg-type]
    return attr, diag, proc, cg, ids


def _answer(diag: FakeDiag, inode: int, cgroup_id: int | None, uid: int | None = None) -> tuple:
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


def test_attributor_cgroup_route_then_cache(tmp_path: Path) -> None:
    attr, diag, proc, cg, ids = _setup(tmp_path)
    _fake_proc(proc, 1, exe="/usr/lib/systemd/systemd", argv=["/sbin/init"], ppid=0)
    _fake_proc(
        proc,
        500,
        exe="/usr/sbin/nginx (deleted)",
        argv=["nginx: worker process"],
        ppid=1,
        sockets={7: 5555},
        cgroup="/system.slice/nginx.service",
    )
    _fake_proc(proc, 501, exe="/usr/sbin/nginx", argv=["nginx"], ppid=1, sockets={3: 6666})
    (cg / "system.slice" / "nginx.service" / "cgroup.procs").write_text("501\n500\n")
    flow = _answer(diag, 5555, ids["/system.slice/nginx.service"])

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
    flow2 = _answer(diag, 6666, ids["/system.slice/nginx.service"])
    assert attr.lookup(flow2[0], 4, *flow2[1:]).pid == 501
    assert attr.lookup(flow[0], 4, *flow[1:]).pid == 500
    assert attr.stats()["hits"] == 2


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


def _recorded(tmp_path: Path, events: bool, fake_paths: bool = True) -> Recorded:
    """As _setup, with the kernel's record of socket owners (FakeOwners) and, if `events`,
    process events (FakeEvents); fake_paths=False checks exe paths in the fake /proc."""
    proc, cg = tmp_path / "proc", tmp_path / "cg"
    ids = _fake_cgroup_tree(cg)
    diag, owners = FakeDiag(), FakeOwners()
    ev = FakeEvents() if events else False
    paths = FakePaths() if fake_paths else ExePaths(str(proc))
    attr = Attributor(proc_root=str(proc), cgroup_root=str(cg), diag=diag,  # type: ignore[arg-type]
                      owners=owners, events=ev, paths=paths)  # type: ignore[arg-type]
    return Recorded(attr, diag, owners, ev, proc, cg, ids)


def test_started_before_allows_the_start_tick() -> None:
    second = 1_000_000_000
    assert started_before(1000, 10 * second, 100)
    assert started_before(1000, 10 * second + second // 200, 100)  # within the tick
    assert not started_before(1001, 10 * second, 100)
    assert started_before(250, 10 * second, 25)


@pytest.mark.parametrize("events", [False, True])
def test_attributor_trusts_the_kernel_record_only_while_its_process_lives(
        tmp_path: Path, events: bool) -> None:
    attr, diag, owners, _ev, proc, cg, ids = _recorded(tmp_path, events, fake_paths=False)
    hz = os.sysconf("SC_CLK_TCK")
    second = 1_000_000_000
    _fake_proc(proc, 700, exe="/usr/bin/client", argv=["client"], ppid=1, sockets={5: 71},
               starttime=10 * hz)
    _fake_proc(proc, 702, exe="/usr/bin/holder", argv=["holder"], ppid=1, sockets={6: 72},
               starttime=10 * hz)
    (cg / "user.slice" / "cgroup.procs").write_text("700\n702\n")
    owned = _answer(diag, 71, ids["/user.slice"])
    owners.records[71 << 8] = (700, 11 * second)  # connected after the process started
    info = attr.lookup(owned[0], 4, *owned[1:])
    assert (info.pid, info.exe, info.cmdline, info.inode) == (700, "/usr/bin/client",
                                                              ("client",), 71)
    assert info.cgroup == "/user.slice"
    st = attr.stats()
    assert (st["recorded"], st["misses"], st["pids_probed"]) == (1, 0, 0)
    # a record older than the process now at its pid: that pid was reused; the socket's
    # holder (702) is not who made it either: the socket alone is known
    reused = _answer(diag, 72, ids["/user.slice"])
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
    unrecorded = _answer(diag, 73, ids["/user.slice"])
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
    attr, diag, owners, ev, proc, _cg, ids = _recorded(tmp_path, events)
    hz = os.sysconf("SC_CLK_TCK")
    second = 1_000_000_000
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    _fake_proc(proc, 700, exe="/usr/bin/curl", argv=["curl"], ppid=1, sockets={5: 71},
               starttime=1 * hz)
    flow = _answer(diag, 71, ids["/user.slice"])
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
    attr, diag, owners, _ev, proc, _cg, ids = _recorded(tmp_path, events=False)
    hz = os.sysconf("SC_CLK_TCK")
    _fake_proc(proc, 700, exe="/usr/bin/python3", argv=["python3"], ppid=1, sockets={5: 71},
               starttime=1 * hz)
    first = _answer(diag, 71, ids["/user.slice"])
    owners.records[71 << 8] = (700, time.clock_gettime_ns(time.CLOCK_BOOTTIME) - 10)
    assert attr.lookup(first[0], 4, *first[1:]).exe == "/usr/bin/python3"
    _fake_proc(proc, 700, exe="/usr/bin/curl", argv=["curl"], ppid=1, sockets={6: 72})
    exec_done = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    owners.execs.times[700] = (exec_done - 100, exec_done)
    second = _answer(diag, 72, ids["/user.slice"])
    owners.records[72 << 8] = (700, exec_done + 10)
    info = attr.lookup(second[0], 4, *second[1:])
    assert (info.pid, info.exe, info.cmdline) == (700, "/usr/bin/curl", ("curl",))


def test_attributor_marks_a_path_that_does_not_name_its_file(tmp_path: Path) -> None:
    """A process whose exe path leads elsewhere (a mount of its own over it) keeps the path
    it shows, marked; a parent's such path is not given at all."""
    attr, diag, proc, cg, ids = _setup(tmp_path)
    paths = attr._paths
    assert isinstance(paths, FakePaths)
    _fake_proc(proc, 30, exe="/usr/bin/sh", argv=["sh"], ppid=1)
    _fake_proc(proc, 31, exe="/usr/bin/curl", argv=["curl"], ppid=30, sockets={3: 3100})
    (cg / "user.slice" / "cgroup.procs").write_text("30\n31\n")
    paths.impostors |= {(31, "/usr/bin/curl"), (30, "/usr/bin/sh")}
    flow = _answer(diag, 3100, ids["/user.slice"])
    info = attr.lookup(flow[0], 4, *flow[1:])
    assert (info.pid, info.exe, info.exe_mismatch, info.exe_deleted) == (31, "/usr/bin/curl",
                                                                         True, False)
    assert info.ppid == 30 and info.parent_exe is None


def test_image_unchanged() -> None:
    c = 1000  # connected at
    assert image_unchanged(c, None, None, 2000)  # no exec seen since tracking began
    assert image_unchanged(c, 500, 600, 2000)  # exec'd, then connected, then read
    assert not image_unchanged(c, 500, 600, 550)  # read while that exec ran: read again
    assert not image_unchanged(c, 1500, 1600, 2000)  # exec'd after connecting
    assert not image_unchanged(c, 900, 1100, 2000)  # connected during an exec
    assert not image_unchanged(c, 1500, 600, 2000)  # an exec under way
    assert not image_unchanged(c, 900, None, 2000)  # begun, never seen to end
    assert image_unchanged(c, None, 600, 2000)  # only ends known
    assert not image_unchanged(c, None, 1100, 2000)
    assert image_unchanged(c, c, c, c)  # the same tick: the exec came first


def test_exec_program_shape() -> None:
    """Both recorders: entry[field] = now in place, else a new entry; both jumps land."""
    for field in (0, 1):
        code = exec_program(7, field)
        insns = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), 8)]
        assert len(code) == 27 * 8  # two ld_imm64 take two slots each
        assert insns[-1][0] == 0x95 and [op for op, *_ in insns].count(0x85) == 4
        assert insns[5][3] == insns[17][3] == 7  # the map's fd
        jeq, ja = insns[10], insns[12]
        assert (jeq[0], 10 + 1 + jeq[2]) == (0x15, 13)  # no entry: to the insert
        assert (ja[0], 12 + 1 + ja[2]) == (0x05, 25)  # to "r0 = 0; exit"
        assert insns[11][2] == 8 * field and insns[16][2] == -24 + 8 * field



def test_attributor_cache_is_checked(tmp_path: Path) -> None:
    """A cached inode→pid whose fd no longer holds the socket is searched again, and a
    reused pid (other start time, other exe) gets fresh process info."""
    attr, diag, proc, cg, ids = _setup(tmp_path)
    _fake_proc(proc, 300, exe="/usr/bin/old", argv=["old"], ppid=1, sockets={4: 42}, starttime=10)
    (cg / "user.slice" / "cgroup.procs").write_text("300\n")
    flow = _answer(diag, 42, ids["/user.slice"])
    assert attr.lookup(flow[0], 4, *flow[1:]).exe == "/usr/bin/old"
    # pid 300 died; a new process got pid 300 and (somehow) socket 42 at another fd
    (proc / "300" / "fd" / "4").unlink()
    _fake_proc(proc, 300, exe="/usr/bin/new", argv=["new"], ppid=1, sockets={9: 42}, starttime=99)
    info = attr.lookup(flow[0], 4, *flow[1:])
    assert (info.pid, info.exe, info.cmdline) == (300, "/usr/bin/new", ("new",))
    assert attr.stats()["misses"] == 2


def test_attributor_fallback_by_uid(tmp_path: Path) -> None:
    """Socket's cgroup does not hold the process (it moved): found by the owner's pids."""
    attr, diag, proc, cg, ids = _setup(tmp_path)
    _fake_proc(proc, 700, exe="/usr/bin/curl", argv=["curl", "x"], ppid=1, sockets={3: 77})
    (cg / "system.slice" / "cgroup.procs").write_text("")
    flow = _answer(diag, 77, ids["/system.slice"])
    info = attr.lookup(flow[0], 4, *flow[1:])
    assert info.pid == 700 and info.cgroup == "/system.slice" and info.unit is None
    assert attr.stats()["fallbacks"] == 1
    # a socket owned by another uid is not looked for among our (test user's) processes
    flow2 = _answer(diag, 78, ids["/system.slice"], uid=os.getuid() + 12345)
    _fake_proc(proc, 701, exe="/usr/bin/x", argv=["x"], ppid=1, sockets={3: 78})
    info2 = attr.lookup(flow2[0], 4, *flow2[1:])
    assert info2.pid is None and info2.uid == os.getuid() + 12345 and info2.inode == 78
    assert attr.stats()["failures"] == 1


def test_attributor_unknowns_never_raise(tmp_path: Path) -> None:
    attr, diag, _proc, _cg, ids = _setup(tmp_path)
    assert attr.lookup("tcp", 4, "10.0.0.1", 1, "10.0.0.2", 2) == UNKNOWN
    # socket known, process gone: uid and cgroup are still reported
    flow = _answer(diag, 123, ids["/user.slice"])
    info = attr.lookup(flow[0], 4, *flow[1:])
    assert info.uid == os.getuid() and info.inode == 123 and info.pid is None
    assert info.cgroup == "/user.slice"
    # inode 0 (a socket with no file, e.g. orphaned): uid only
    flow0 = _answer(diag, 0, None)
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
    attr, diag, _proc, _cg, _ids = _setup(tmp_path)
    me = os.getuid()
    name = pwd.getpwuid(me).pw_name
    assert attr.lookup("udp", 4, "10.0.0.1", 1, "10.0.0.2", 53, uid=me) == ProcessInfo(
        uid=me, user=name)
    diag.fail = True  # the lookup itself failing leaves the kernel's word too
    assert attr.lookup("udp", 4, "10.0.0.1", 1, "10.0.0.2", 53, uid=me).uid == me
    assert attr.lookup("udp", 4, "10.0.0.1", 1, "10.0.0.2", 53) == UNKNOWN


def test_lru_bounded() -> None:
    lru: LRU[int, int] = LRU(2)
    lru.put(1, 1)
    lru.put(2, 2)
    assert lru.get(1) == 1
    lru.put(3, 3)
    assert lru.get(2) is None and lru.get(1) == 1 and lru.get(3) == 3 and len(lru) == 2
    assert lru.evictions == 1


def test_memo_is_emptied_when_full() -> None:
    memo: Memo[int, str] = Memo(2)
    assert memo.put(1, "a") == "a" and memo.put(2, "b") == "b"
    assert memo.get(1) == "a" and len(memo) == 2
    memo.put(3, "c")
    assert dict(memo) == {3: "c"}


# ------------------------------------------------------ process events, memberships, fd dirs


def _cn_datagram(what: int, *ints: int, idx: int = 1, val: int = 1) -> bytes:
    """One cn_proc netlink datagram as the kernel sends it."""
    ev = struct.pack("=IIQ", what, 0, 123456789) + struct.pack(f"={len(ints)}i", *ints)
    cn = struct.pack("=IIIIHH", idx, val, 0, 0, len(ev), 0) + ev
    return struct.pack("=IHHII", 16 + len(cn), NLMSG_DONE, 0, 0, 0) + cn


def test_cnproc_subscribe_layout() -> None:
    msg = build_subscribe(4321)
    assert len(msg) == 16 + 20 + 4
    assert struct.unpack_from("=IHHII", msg) == (40, NLMSG_DONE, 0, 0, 4321)
    assert struct.unpack_from("=IIIIHH", msg, 16) == (CN_IDX_PROC, CN_VAL_PROC, 0, 0, 4, 0)
    assert struct.unpack_from("=I", msg, 36) == (1,)  # PROC_CN_MCAST_LISTEN
    assert struct.unpack_from("=I", build_subscribe(1, listen=False), 36) == (2,)


def test_cnproc_parse_events() -> None:
    data = (
        _cn_datagram(PROC_EVENT_FORK, 10, 10, 11, 11)  # process 10 forks process 11
        + _cn_datagram(PROC_EVENT_FORK, 10, 10, 12, 10)  # a thread of 10: not a process
        + _cn_datagram(PROC_EVENT_EXEC, 11, 11)
        + _cn_datagram(PROC_EVENT_EXIT, 13, 10, 0, 17, 1, 1)  # a thread exits
        + _cn_datagram(PROC_EVENT_EXIT, 11, 11, 0, 17, 10, 10)
        + _cn_datagram(0x200, 11, 11)  # comm change: not wanted
        + _cn_datagram(PROC_EVENT_EXEC, 20, 20, idx=2)  # another connector
        + _cn_datagram(PROC_EVENT_FORK, 1, 1)  # short fork body
    )
    assert parse_events(data) == [
        ProcEvent("fork", 11, 10, 123456789),
        ProcEvent("exec", 11, None, 123456789),
        ProcEvent("exit", 11, None, 123456789),
    ]
    assert parse_events(data[:-3]) == parse_events(data)  # a cut last message is dropped
    assert parse_events(b"") == [] and parse_events(b"\xff" * 10) == []
    assert parse_events(struct.pack("=IHHII", 4, 3, 0, 0, 0)) == []  # bad length


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


def test_fd_dirs_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = tmp_path / "proc"
    _fake_proc(proc, 10, exe="/usr/bin/a", argv=["a"], ppid=1, sockets={3: 111, 4: 222})
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


def test_attributor_live_members(tmp_path: Path) -> None:
    """With process events, a forked client is found without re-reading cgroup.procs; a
    process that moved in (no event for that) is found after one re-read."""
    proc = tmp_path / "proc"
    cg = tmp_path / "cg"
    ids = _fake_cgroup_tree(cg)
    diag, ev = FakeDiag(), FakeEvents()
    attr = Attributor(proc_root=str(proc), cgroup_root=str(cg), diag=diag, events=ev)  # type: ignore[arg-type]
    assert attr.live_members
    nginx = "/system.slice/nginx.service"
    for pid in range(100, 110):
        _fake_proc(proc, pid, exe="/usr/sbin/nginx", argv=["nginx"], ppid=1, sockets={3: pid})
    (cg / nginx[1:] / "cgroup.procs").write_text("\n".join(str(p) for p in range(100, 110)))
    f = _answer(diag, 105, ids[nginx])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 105
    assert attr.stats()["procs_reads"] == 1
    # worker 101 forks 150 (cgroup.procs file not updated: only the event tells)
    _fake_proc(proc, 150, exe="/usr/bin/curl", argv=["curl"], ppid=101, sockets={5: 1500})
    ev.queue = [ProcEvent("fork", 150, 101), ProcEvent("exec", 150)]
    before = attr.stats()["pids_probed"]
    f = _answer(diag, 1500, ids[nginx])
    info = attr.lookup(f[0], 4, *f[1:])
    assert info.pid == 150 and info.exe == "/usr/bin/curl"
    s = attr.stats()
    assert s["procs_reads"] == 1 and s["pids_probed"] - before == 1 and s["events"] == 2
    # 170 moved into the cgroup: the live set misses it, one re-read finds it
    _fake_proc(proc, 170, exe="/usr/bin/x", argv=["x"], ppid=1, sockets={4: 1700})
    (cg / nginx[1:] / "cgroup.procs").write_text("170\n")
    f = _answer(diag, 1700, ids[nginx])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 170
    s = attr.stats()
    assert s["procs_reads"] == 2 and s["fallbacks"] == 0
    # events were lost: memberships are re-read, answers stay right
    ev.lost = True
    (proc / "107" / "fd" / "8").symlink_to("socket:[1070]")
    f = _answer(diag, 1070, ids[nginx])
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
    attr, diag, proc, cg, ids = _setup(tmp_path)
    for pid in (200, 201, 202):
        _fake_proc(proc, pid, exe="/usr/bin/w", argv=["w"], ppid=1, sockets={3: pid * 10})
    (cg / "user.slice" / "cgroup.procs").write_text("200\n201\n202\n")
    f = _answer(diag, 2010, ids["/user.slice"])
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
    f = _answer(diag, 777, ids["/user.slice"])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 200
    assert attr.stats()["fallbacks"] == 0


def test_parse_status_gids() -> None:
    status = (b"Name:\tcurl\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t1000\t1000\t1000\n"
              b"Groups:\t4 24 1000 \n")
    assert parse_status_gids(status) == (1000, 4, 24)
    assert parse_status_gids(b"Name:\tx\n") == ()


def test_exe_hashes_once_per_file(tmp_path: Path) -> None:
    binary = tmp_path / "bin"
    binary.write_bytes(b"\x7fELF" + b"x" * 100_000)
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "exe").symlink_to(binary)
    hashes = ExeHashes(str(tmp_path / "proc"))
    want = hashlib.sha256(binary.read_bytes()).hexdigest()
    assert hashes.sha256(7) == want and hashes.sha256(7) == want
    assert hashes.hashed == 1
    binary.write_bytes(b"\x7fELF" + b"y" * 100_000)  # rebuilt in place: mtime moves
    os.utime(binary, ns=(1, 1))
    assert hashes.sha256(7) == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert hashes.hashed == 2
    assert hashes.sha256(8) is None  # no such process


def _same_count(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Every kept /proc/PID/fd reports `n` open fds (close + socket keeps the count)."""
    real_stat = os.stat
    monkeypatch.setattr(
        "nfguard.procs.process.os.stat",
        lambda p, *a, **k: (
            os.stat_result((0,) * 6 + (n, 0, 0, 0)) if isinstance(p, int) else real_stat(p, *a, **k)
        ),
    )


def _replace_socket(proc: Path, pid: int, fd: int, inode: int) -> None:
    link = proc / str(pid) / "fd" / str(fd)
    link.unlink()
    link.symlink_to(f"socket:[{inode}]")


def test_fd_dirs_hint_reads_the_oldest_sockets_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy client replaces its oldest connection on the fd just freed: the hint finds the
    new socket there with one readlink, without listing the directory."""
    proc = tmp_path / "proc"
    # the oldest socket on the lowest fd: a listing (highest fd first) must order by inode
    _fake_proc(proc, 10, exe="/usr/bin/a", argv=["a"], ppid=1,
               sockets={3: 200, 4: 300, 5: 400, 6: 500})
    _same_count(monkeypatch, 4)
    d = FdDirs(str(proc))
    assert d.probe(10, 999) == (MISS, None)  # listed once: 200 (fd 3) is the oldest
    _replace_socket(proc, 10, 3, 600)
    listdir = os.listdir
    monkeypatch.setattr("nfguard.procs.process.os.listdir", lambda *a: pytest.fail("listed"))
    assert d.probe(10, 600, hint=1) == (FOUND, 3)
    # 600 is now the newest: the next oldest is 300 on fd 4, then 400 on fd 5
    _replace_socket(proc, 10, 5, 700)
    assert d.probe(10, 700, hint=1) == (UNCHANGED, None)  # fd 4 read, not it: put off
    assert d.probe(10, 700, hint=2) == (FOUND, 5)
    monkeypatch.setattr("nfguard.procs.process.os.listdir", listdir)
    _replace_socket(proc, 10, 6, 800)
    assert d.probe(10, 800, full=True) == (FOUND, 6)


def test_attributor_finds_a_busy_client_without_rereading_cgroup_procs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process events: a process that owned a socket lately is checked (its oldest
    sockets first) before cgroup.procs is read again."""
    attr, diag, proc, cg, ids = _setup(tmp_path)
    assert not attr.live_members
    pids = range(300, 340)
    for pid in pids:
        _fake_proc(proc, pid, exe="/usr/bin/w", argv=["w"], ppid=1, sockets={3: pid * 10})
    _fake_proc(proc, 400, exe="/usr/bin/pool", argv=["pool"], ppid=1,
               sockets={fd: 4000 + fd for fd in range(3, 35)})
    (cg / "user.slice" / "cgroup.procs").write_text("\n".join(map(str, [*pids, 400])))
    f = _answer(diag, 4034, ids["/user.slice"])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 400
    _same_count(monkeypatch, 34)
    before = attr.stats()
    for step, inode in enumerate(range(5000, 5010)):
        _replace_socket(proc, 400, 3 + step, inode)  # the oldest connection closes
        f = _answer(diag, inode, ids["/user.slice"])
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
    ids = _fake_cgroup_tree(cg)
    diag, ev = FakeDiag(), FakeEvents()
    attr = Attributor(proc_root=str(proc), cgroup_root=str(cg), diag=diag, events=ev)  # type: ignore[arg-type]
    nginx = "/system.slice/nginx.service"
    _fake_proc(proc, 100, exe="/usr/sbin/nginx", argv=["nginx"], ppid=1, sockets={3: 1000})
    (cg / nginx[1:] / "cgroup.procs").write_text("100\n")
    f = _answer(diag, 1000, ids[nginx])
    assert attr.lookup(f[0], 4, *f[1:]).exe == "/usr/sbin/nginx"
    read: list[int] = []
    real = ProcReader.exe_link
    monkeypatch.setattr(ProcReader, "exe_link",
                        lambda self, pid: read.append(pid) or real(self, pid))
    (proc / "100" / "fd" / "4").symlink_to("socket:[1001]")
    f = _answer(diag, 1001, ids[nginx])
    assert attr.lookup(f[0], 4, *f[1:]).pid == 100 and read == []
    hits = attr.stats()["hits"]
    assert attr.lookup(f[0], 4, *f[1:]).pid == 100 and read == []  # the inode cache
    assert attr.stats()["hits"] == hits + 1
    # exec keeps the fds: the cached socket now belongs to another program
    _fake_proc(proc, 100, exe="/usr/bin/python3", argv=["python3"], ppid=1)
    ev.queue = [ProcEvent("exec", 100)]
    info = attr.lookup(f[0], 4, *f[1:])
    assert info.exe == "/usr/bin/python3" and info.cmdline == ("python3",) and read[0] == 100
    assert attr.stats()["hits"] == hits + 2


def test_attributor_without_events_sees_an_exec_behind_a_cached_socket(tmp_path: Path) -> None:
    """No process events: a cached socket found again through the kept fd directory is
    still checked against the exe link, so a program exec'd on the same fds is seen."""
    attr, diag, proc, cg, ids = _setup(tmp_path)
    assert not attr.live_members
    nginx = "/system.slice/nginx.service"
    _fake_proc(proc, 100, exe="/usr/sbin/nginx", argv=["nginx"], ppid=1, sockets={3: 1000})
    (cg / nginx[1:] / "cgroup.procs").write_text("100\n")
    f = _answer(diag, 1000, ids[nginx])
    assert attr.lookup(f[0], 4, *f[1:]).exe == "/usr/sbin/nginx"
    assert attr.lookup(f[0], 4, *f[1:]).exe == "/usr/sbin/nginx"
    hits = attr.stats()["hits"]
    _fake_proc(proc, 100, exe="/usr/bin/python3", argv=["python3"], ppid=1)
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


def test_exe_paths_believe_a_path_only_where_it_names_the_running_file(tmp_path: Path) -> None:
    """pid 10 shares the host's mount namespace and runs the host's curl; pid 11, in a
    namespace of its own (not one root made), runs python but shows curl's path."""
    host, proc = tmp_path / "host", tmp_path / "proc"
    (host / "usr" / "bin").mkdir(parents=True)
    for name in ("curl", "python3"):
        (host / "usr" / "bin" / name).write_text(name)
    (proc / "1" / "ns").mkdir(parents=True)
    (proc / "1" / "root").symlink_to(host)
    (proc / "1" / "ns" / "user").write_text("user")
    (proc / "1" / "ns" / "mnt").symlink_to("mnt:[1]")  # as nsfs links read
    for pid, exe, mounts in ((10, "curl", "mnt:[1]"), (11, "python3", "mnt:[2]")):
        (proc / str(pid) / "ns").mkdir(parents=True)
        (proc / str(pid) / "exe").symlink_to(host / "usr" / "bin" / exe)
        (proc / str(pid) / "ns" / "mnt").symlink_to(mounts)
    paths = ExePaths(str(proc))
    assert paths.tree(10) == paths.tree(11) == f"{proc}/1/root"
    assert paths.names_its_file(10, "/usr/bin/curl")
    assert not paths.names_its_file(11, "/usr/bin/curl")  # a mount of its own over it
    assert paths.names_its_file(11, "/usr/bin/python3")
    assert not paths.names_its_file(10, "usr/bin/curl")  # not a path from a root
    assert not paths.names_its_file(12, "/usr/bin/curl")  # gone


@pytest.mark.parametrize("events", [False, True])
def test_parent_exe_is_the_program_that_forked_it(tmp_path: Path, events: bool) -> None:
    """A parent that exec'd after forking the flow's process (its payload) did not start
    it as the program it runs now: no parent_exe. Nor does a parent the process was
    reparented to (known from its fork event)."""
    attr, diag, owners, ev, proc, _cg, ids = _recorded(tmp_path, events)
    hz = os.sysconf("SC_CLK_TCK")
    second = 1_000_000_000
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    start = (now - 10 * second) * hz // second  # the child's start tick
    _fake_proc(proc, 40, exe="/usr/bin/git", argv=["git"], ppid=1, starttime=1)
    _fake_proc(proc, 41, exe="/usr/bin/python3", argv=["python3"], ppid=40, sockets={3: 4100},
               starttime=start)
    flow = _answer(diag, 4100, ids["/user.slice"])
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
