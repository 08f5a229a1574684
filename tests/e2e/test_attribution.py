"""Attribution against the real kernel: live sockets, child processes, a test cgroup, and a
short-lived curl whose SYN is held in NFQUEUE inside a throwaway network namespace."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfguard.procs import Attributor, ProcessInfo
from nfguard.procs.cgroups import find_cgroup2_root

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

REPO = Path(__file__).resolve().parents[2]
SELF_EXE = os.readlink("/proc/self/exe")
CURL = shutil.which("curl")
# a python that an unprivileged user may run (ours may live under /root)
SYS_PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else None


@pytest.fixture(params=["recorded", "searched"])
def attr(request: pytest.FixtureRequest) -> Iterator[Attributor]:
    """Both routes to the process: the kernel's record of who connected the socket (eBPF),
    and the /proc search that stands in where it cannot load."""
    recorded = request.param == "recorded"
    if recorded and find_cgroup2_root() is None:
        pytest.skip("no cgroup v2: the record hooks there")
    a = Attributor(owners=recorded)
    assert a.recorded_owners == recorded, a.owners_error
    yield a
    a.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s
    s.close()


def _inode(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def _look(attr: Attributor, proto: str, s: socket.socket, peer: tuple | None = None) -> ProcessInfo:
    local = s.getsockname()
    remote = peer if peer is not None else s.getpeername()
    fam = 4 if s.family == socket.AF_INET else 6
    return attr.lookup(proto, fam, local[0], local[1], remote[0], remote[1])


def _assert_me(info: ProcessInfo, s: socket.socket) -> None:
    assert info.pid == os.getpid()
    assert info.uid == 0 and info.user == "root"
    assert info.inode == _inode(s)
    assert info.exe == SELF_EXE and not info.exe_deleted
    assert info.ppid == os.getppid()
    assert info.cgroup is not None


# ------------------------------------------------------------------ sockets in this process


def test_tcp_v4_in_process(attr: Attributor, listener: socket.socket) -> None:
    c = socket.create_connection(listener.getsockname())
    try:
        info = _look(attr, "tcp", c)
        _assert_me(info, c)
        assert info.unproven is not attr.recorded_owners  # a search finds only a holder
        assert _look(attr, "tcp", c) == info
        st = attr.stats()
        if attr.recorded_owners:
            assert st["recorded"] == 2 and st["pids_probed"] == 0, st
        else:
            assert st["hits"] == 1
    finally:
        c.close()


def test_tcp_v6_and_dual_stack(attr: Attributor) -> None:
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", 0))
    srv.listen()
    port = srv.getsockname()[1]
    v6 = socket.create_connection(("::1", port))
    dual = socket.socket(socket.AF_INET6)
    dual.connect(("::ffff:127.0.0.1", port))
    try:
        _assert_me(_look(attr, "tcp", v6), v6)
        # the packet of a dual-stack socket's IPv4 flow is plain IPv4: query as IPv4
        lport, rport = dual.getsockname()[1], dual.getpeername()[1]
        info = attr.lookup("tcp", socket.AF_INET, "127.0.0.1", lport, "127.0.0.1", rport)
        _assert_me(info, dual)
    finally:
        v6.close()
        dual.close()
        srv.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("connected", [True, False])
def test_udp(attr: Attributor, family: int, connected: bool) -> None:
    lo = "127.0.0.1" if family == socket.AF_INET else "::1"
    srv = socket.socket(family, socket.SOCK_DGRAM)
    srv.bind((lo, 0))
    cli = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if connected:
            cli.connect(srv.getsockname()[:2])
            cli.send(b"x")
        else:
            cli.sendto(b"x", srv.getsockname()[:2])  # bound to the wildcard address
        _data, peer = srv.recvfrom(16)
        fam = 4 if family == socket.AF_INET else 6
        dst = srv.getsockname()
        info = attr.lookup("udp", fam, peer[0], peer[1], dst[0], dst[1])
        _assert_me(info, cli)
    finally:
        cli.close()
        srv.close()


def test_dual_stack_udp_unconnected(attr: Attributor) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    cli = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    cli.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        cli.sendto(b"x", ("::ffff:127.0.0.1", srv.getsockname()[1]))
        _data, peer = srv.recvfrom(16)
        info = attr.lookup("udp", 4, peer[0], peer[1], *srv.getsockname())
        _assert_me(info, cli)
    finally:
        cli.close()
        srv.close()


def test_gone_socket_is_unknown_not_error(attr: Attributor, listener: socket.socket) -> None:
    c = socket.create_connection(listener.getsockname())
    local, remote = c.getsockname(), c.getpeername()
    c.close()
    info = attr.lookup("tcp", 4, local[0], local[1], remote[0], remote[1])
    assert info.pid is None and info.inode is None
    assert attr.lookup("udp", 4, "127.0.0.1", 9, "127.0.0.1", 9).uid is None


# ------------------------------------------------------------------------- child processes

CHILD = textwrap.dedent(
    """
    import json, socket, sys, ctypes
    if len(sys.argv) > 2:   # rename ourselves the way daemons do: comm via prctl
        ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)
    port = int(sys.argv[1])
    t = socket.create_connection(("127.0.0.1", port))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", ("127.0.0.1", port))
    print(json.dumps({"tcp": t.getsockname(), "udp": u.getsockname()}), flush=True)
    sys.stdin.read()
    """
)


def _spawn_child(
    port: int, *args: str, argv0: str | None = None, python: str = sys.executable, **kw
) -> subprocess.Popen:
    """A python child holding one TCP connection and one unconnected UDP socket; argv0
    replaces argv[0] (the exe stays the real interpreter)."""
    if argv0 is not None:  # python finds its stdlib from argv[0]: tell it where it is
        kw["env"] = {**os.environ, "PYTHONHOME": sys.base_prefix}
    return subprocess.Popen(
        [argv0 or python, "-c", CHILD, str(port), *args],
        executable=python,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **kw,
    )


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)


def _child_flows(p: subprocess.Popen, port: int) -> tuple[tuple, tuple]:
    assert p.stdout is not None
    got = json.loads(p.stdout.readline())
    tcp = ("tcp", 4, got["tcp"][0], got["tcp"][1], "127.0.0.1", port)
    # unconnected UDP bound to 0.0.0.0: the packet leaves from 127.0.0.1
    udp = ("udp", 4, "127.0.0.1", got["udp"][1], "127.0.0.1", port)
    return tcp, udp


def test_child_python_tcp_and_udp(attr: Attributor, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    usrv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usrv.bind(("127.0.0.1", port))
    p = _spawn_child(port)
    try:
        tcp, udp = _child_flows(p, port)
        for flow in (tcp, udp):
            info = attr.lookup(*flow)
            assert info.pid == p.pid, flow
            assert info.exe == SELF_EXE
            assert info.cmdline[:2] == (sys.executable, "-c")
            assert info.ppid == os.getpid() and info.parent_exe == SELF_EXE
            assert info.uid == 0
    finally:
        _stop(p)
        usrv.close()


def test_renamed_process_shows_real_exe(attr: Attributor, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    p = _spawn_child(port, "sshd", argv0="/usr/sbin/sshd")
    try:
        tcp, _udp = _child_flows(p, port)
        info = attr.lookup(*tcp)
        assert Path(f"/proc/{p.pid}/comm").read_text().strip() == "sshd"
        assert info.pid == p.pid
        assert info.cmdline[0] == "/usr/sbin/sshd"
        assert info.exe == SELF_EXE
    finally:
        _stop(p)


@pytest.mark.skipif(SYS_PY is None, reason="no /usr/bin/python3")
def test_child_in_cgroup_as_other_user(
    attr: Attributor, listener: socket.socket, test_cgroup: Path
) -> None:
    port = listener.getsockname()[1]
    procs = test_cgroup / "cgroup.procs"

    def join() -> None:  # join while still root, then drop to nobody
        procs.write_text(str(os.getpid()))
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    p = _spawn_child(port, python=SYS_PY, preexec_fn=join)
    try:
        tcp, udp = _child_flows(p, port)
        rel = "/" + test_cgroup.name
        for flow in (tcp, udp):
            info = attr.lookup(*flow)
            assert info.pid == p.pid
            assert info.uid == 65534 and info.user == "nobody"
            assert info.cgroup == rel and info.unit == test_cgroup.name
            assert info.exe == os.path.realpath(SYS_PY)
        assert attr.stats()["fallbacks"] == 0
    finally:
        _stop(p)


@pytest.mark.skipif(SYS_PY is None, reason="no /usr/bin/python3")
def test_moved_process_found_by_fallback(
    attr: Attributor, listener: socket.socket, test_cgroup: Path
) -> None:
    """Socket made in one cgroup, process moved to another: cgroup route fails, the uid
    scan finds it, and the socket's cgroup (where it was made) is reported."""
    port = listener.getsockname()[1]
    p = _spawn_child(port, python=SYS_PY, user=65534)
    try:
        tcp, _udp = _child_flows(p, port)
        sock_cg = Path(f"/proc/{p.pid}/cgroup").read_text().split("0::", 1)[1].strip()
        (test_cgroup / "cgroup.procs").write_text(str(p.pid))
        info = attr.lookup(*tcp)
        assert info.pid == p.pid and info.uid == 65534
        assert info.cgroup == sock_cg
        assert attr.stats()["fallbacks"] == (0 if attr.recorded_owners else 1)
    finally:
        _stop(p)


HANDOVER = textwrap.dedent(
    """
    import json, os, socket, sys, time
    t = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    if os.fork() == 0:  # the child keeps the socket; the process that connected it exits
        print(json.dumps({"pid": os.getpid(), "tcp": t.getsockname()}), flush=True)
        time.sleep(60)
    os._exit(0)
    """
)


def test_socket_outliving_its_connector_is_not_its_holders(
    attr: Attributor, listener: socket.socket
) -> None:
    """The kernel recorded the parent as the socket's owner; the parent exited and its
    child holds the socket: the child did not make the flow (it could have exec'd curl
    since), so the flow has its socket's uid and no process. Without the record, all
    there is to find is the holder."""
    port = listener.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-c", HANDOVER, str(port)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None
    got = json.loads(p.stdout.readline())
    p.wait(timeout=10)
    try:
        info = attr.lookup("tcp", 4, got["tcp"][0], got["tcp"][1], "127.0.0.1", port)
        st = attr.stats()
        if attr.recorded_owners:
            assert info.pid is None and info.exe is None and info.uid == 0, info
            assert st["recorded"] == 0 and st["refused"] == 1 and st["pids_probed"] == 0, st
        else:
            assert info.pid == got["pid"] and info.exe == SELF_EXE and info.unproven
    finally:
        os.kill(got["pid"], 9)


FORKER = textwrap.dedent(
    """
    import json, os, socket, sys, time
    port = int(sys.argv[1])
    for _line in sys.stdin:   # one forked client per line, each holding a new connection
        if os.fork() == 0:
            t = socket.create_connection(("127.0.0.1", port))
            print(json.dumps({"pid": os.getpid(), "tcp": t.getsockname()}), flush=True)
            time.sleep(60)
            os._exit(0)
    """
)


def test_forked_client_found_through_process_events(
    attr: Attributor, listener: socket.socket, test_cgroup: Path
) -> None:
    """A process forked inside a big cgroup is known from its fork event: found first,
    without re-reading cgroup.procs (needs the process connector: initial netns, root)."""
    if not attr.live_members:
        pytest.skip("no process connector here")
    port = listener.getsockname()[1]
    procs = test_cgroup / "cgroup.procs"
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(50)]
    p = subprocess.Popen(
        [sys.executable, "-c", FORKER, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: procs.write_text(str(os.getpid())),
    )
    try:
        for s in sleepers:
            procs.write_text(str(s.pid))
        assert p.stdin is not None and p.stdout is not None
        reads = None
        for _ in range(3):
            p.stdin.write("\n")
            p.stdin.flush()
            got = json.loads(p.stdout.readline())
            info = attr.lookup("tcp", 4, got["tcp"][0], got["tcp"][1], "127.0.0.1", port)
            assert info.pid == got["pid"] and info.ppid == p.pid
            assert info.unit == test_cgroup.name
            st = attr.stats()
            if reads is None:
                reads = st["procs_reads"]
            assert st["procs_reads"] == reads and st["fallbacks"] == 0
        assert st["pids_probed"] <= 5, st
    finally:
        _stop(p)
        for s in sleepers:
            _stop(s)


# --------------------------------------------------------------------------------- curl


@pytest.mark.skipif(CURL is None, reason="no curl")
def test_curl(attr: Attributor, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    p = subprocess.Popen([CURL, "-s", "-m", "20", f"http://127.0.0.1:{port}/"])
    try:
        conn, peer = listener.accept()
        info = attr.lookup("tcp", 4, peer[0], peer[1], "127.0.0.1", port)
        assert info.pid == p.pid
        assert info.exe == os.path.realpath(CURL)
        assert info.cmdline[0] == CURL
        conn.close()
    finally:
        _stop(p)


@pytest.mark.skipif(CURL is None, reason="no curl")
def test_deleted_exe(attr: Attributor, listener: socket.socket, tmp_path: Path) -> None:
    assert CURL is not None
    copy = tmp_path / "curl-copy"
    shutil.copy2(CURL, copy)
    port = listener.getsockname()[1]
    p = subprocess.Popen([str(copy), "-s", "-m", "20", f"http://127.0.0.1:{port}/"])
    try:
        conn, peer = listener.accept()
        copy.unlink()
        info = attr.lookup("tcp", 4, peer[0], peer[1], "127.0.0.1", port)
        assert info.pid == p.pid
        assert info.exe == str(copy) and info.exe_deleted and info.exe_mismatch
        conn.close()
    finally:
        _stop(p)


EXEC_AFTER_CONNECT = textwrap.dedent(
    """
    import json, os, socket, sys
    t = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    os.set_inheritable(t.fileno(), True)
    print(json.dumps({"pid": os.getpid(), "tcp": t.getsockname()}), flush=True)
    os.execv(sys.argv[1], [sys.argv[1], "-s", "-K", "-"])  # waits for a config on stdin
    """
)


@pytest.mark.skipif(CURL is None, reason="no curl")
def test_exec_after_connect_is_not_the_new_program(
    attr: Attributor, listener: socket.socket
) -> None:
    """A process connects, then execs curl keeping the socket: curl did not make the
    flow. The kernel's record says when the process connected and when it exec'd."""
    assert CURL is not None
    port = listener.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-c", EXEC_AFTER_CONNECT, CURL, str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        got = json.loads(p.stdout.readline())
        for _ in range(200):
            if os.readlink(f"/proc/{p.pid}/exe") == os.path.realpath(CURL):
                break
            time.sleep(0.01)
        info = attr.lookup("tcp", 4, got["tcp"][0], got["tcp"][1], "127.0.0.1", port)
        if not attr.recorded_owners:
            assert info.pid == p.pid and info.unproven  # who holds it now, nothing more
            return
        if attr.exec_times == "none":
            pytest.skip("no record of execs here")
        assert info.pid is None and info.exe is None and info.uid == 0, info
        assert attr.stats()["refused"] == 1
    finally:
        _stop(p)


@pytest.mark.skipif(CURL is None or SYS_PY is None or shutil.which("unshare") is None,
                    reason="needs curl, /usr/bin/python3, unshare")
def test_binary_mounted_over_a_path_does_not_take_its_name(
    attr: Attributor, listener: socket.socket
) -> None:
    """In a user and mount namespace of its own, an unprivileged process bind-mounts
    python over curl's path: its exe link shows curl's path, but the host's file there is
    another one, so the path is not believed (no `exe` key matches it)."""
    assert CURL is not None and SYS_PY is not None
    port = listener.getsockname()[1]
    curl = os.path.realpath(CURL)
    script = 'mount --bind "$0" "$1" && exec "$1" -c "$2" "$3"'
    p = subprocess.Popen(["unshare", "-Urm", "sh", "-c", script, os.path.realpath(SYS_PY),
                          curl, CHILD, str(port)], user=65534, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        tcp, _udp = _child_flows(p, port)
        assert os.readlink(f"/proc/{p.pid}/exe") == curl  # what it shows
        info = attr.lookup(*tcp)
        assert info.pid == p.pid and info.exe == curl and info.uid == 65534
        assert info.exe_mismatch and not info.exe_deleted
    finally:
        _stop(p)


# ------------------------------------------------- short-lived clients, SYN held in NFQUEUE

NFQ_HELPER = textwrap.dedent(
    """
    import json, select, socket, struct, subprocess, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from netfilterqueue import NetfilterQueue
    from nfguard.procs import Attributor
    curl, qnum, linger = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    attr = Attributor()
    seen = []
    def cb(pkt):
        data = pkt.get_payload()
        ihl = (data[0] & 15) * 4
        proto = {6: "tcp", 17: "udp"}[data[9]]
        sport, dport = struct.unpack_from("!HH", data, ihl)
        src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
        info = attr.lookup(proto, 4, src, sport, dst, dport)
        seen.append({"proto": proto, "pid": info.pid, "exe": info.exe, "uid": info.uid})
        pkt.accept()
    nfq = NetfilterQueue()
    nfq.bind(qnum, cb)
    sock = socket.fromfd(nfq.get_fd(), socket.AF_UNIX, socket.SOCK_STREAM)
    lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
    usrv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); usrv.bind(("127.0.0.1", 0))
    kids = {}
    # curl: connects, gets its connection reset or closed right away, exits
    kids["curl"] = subprocess.Popen([curl, "-s", "-m", "5",
                                     "http://127.0.0.1:%d/" % lst.getsockname()[1]])
    # python: fire one UDP datagram, then exit after `linger` seconds, holding its socket
    # till then (a bare socket.socket(...).sendto(...) is closed by CPython as soon as
    # sendto returns: its packet then has no owner left to find, alive sender or not)
    udp_code = ("import socket, sys, time; s = socket.socket(2, 2);"
                " s.sendto(b'x', ('127.0.0.1', %d)); time.sleep(float(sys.argv[1]))"
                % usrv.getsockname()[1])
    kids["udp"] = subprocess.Popen([sys.executable, "-c", udp_code, linger])
    def serve():
        c, _ = lst.accept(); c.close()
    threading.Thread(target=serve, daemon=True).start()
    deadline = time.time() + 20
    while len(seen) < 2 and time.time() < deadline:
        select.select([sock], [], [], 1)
        nfq.run(block=False)
    for k in kids.values():
        k.wait(timeout=10)
    out = {"kids": {k: v.pid for k, v in kids.items()}, "seen": seen,
           "exe": sys.executable}
    print(json.dumps(out), flush=True)
    nfq.unbind()
    """
)


@pytest.fixture
def netns() -> Iterator[str]:
    if shutil.which("ip") is None or shutil.which("iptables") is None:
        pytest.skip("needs ip and iptables")
    name = f"nfgt-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.skipif(CURL is None, reason="no curl")
@pytest.mark.parametrize("linger", ["0", "1"])
def test_short_lived_clients_with_queued_first_packet(netns: str, linger: str) -> None:
    pytest.importorskip("netfilterqueue")
    qnum = 7
    rules = [
        [
            "-A",
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "--syn",
            "-j",
            "NFQUEUE",
            "--queue-num",
            str(qnum),
        ],
        ["-A", "OUTPUT", "-o", "lo", "-p", "udp", "-j", "NFQUEUE", "--queue-num", str(qnum)],
    ]
    for r in rules:
        subprocess.run(["ip", "netns", "exec", netns, "iptables", *r], check=True)
    res = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-c",
            NFQ_HELPER,
            str(REPO),
            CURL,
            str(qnum),
            linger,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    by_proto = {s["proto"]: s for s in out["seen"]}
    # TCP: the SYN is held, so curl is blocked in connect() and still there to be found
    assert by_proto["tcp"]["pid"] == out["kids"]["curl"]
    assert by_proto["tcp"]["exe"] == os.path.realpath(CURL)
    # UDP: sendto() returns as soon as the datagram is queued. A sender still alive (and
    # still holding its socket) at lookup time is found; one that exits at once is usually
    # gone (socket unhashed) and is then unknown, never someone else.
    if linger == "0":
        assert by_proto["udp"]["pid"] in (out["kids"]["udp"], None)
    else:
        assert by_proto["udp"]["pid"] == out["kids"]["udp"]
    print("short-lived UDP sender attributed:", by_proto["udp"])


def test_no_leftovers() -> None:
    """Our test cgroups are gone (the fixture removes them; this catches a leak)."""
    root = find_cgroup2_root()
    if root is not None:
        assert not [n for n in os.listdir(root) if n.startswith("nfguard-test-")]
