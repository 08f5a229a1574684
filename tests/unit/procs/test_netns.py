"""Sockets of other network namespaces, read from /proc (nfguard.procs.netns): the parsers
against the kernel's formats, and the namespace table over a fake /proc tree."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from nfguard.procs.netns import Namespaces, find_row, local_addresses, proc_hex, socket_rows

TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
              "   uid  timeout inode\n")
FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 198.18.4.0/24 2 0 2
           |-- 198.18.4.0
              /24 link UNICAST
           |-- 198.18.4.2
              /32 host LOCAL
        |-- 198.18.4.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 198.18.4.2
              /32 host LOCAL
"""
IF_INET6 = """\
fd000018000400000000000000000002 04 40 00 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
"""


def row(local: str, remote: str, uid: int, inode: int, state: str = "02") -> str:
    return (f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 "
            f"{uid:5d}        0 {inode} 1 0000000000000000 100 0 0 10 0\n")


def test_addresses_are_written_as_the_kernel_writes_them() -> None:
    """Compared with the kernel's own table: a listening socket's row carries its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        text = Path("/proc/self/net/tcp").read_text()
    local = f"{proc_hex('127.0.0.1')}:{port:04X}"
    assert any(r.local == local for r in socket_rows(text)), (local, text[:400])
    assert len(proc_hex("fd00:18:4::2")) == 32


def test_socket_rows_and_the_exact_row() -> None:
    local, remote = f"{proc_hex('198.18.4.2')}:C350", f"{proc_hex('198.18.1.1')}:0050"
    text = (TCP_HEADER + row("00000000:0016", "00000000:0000", 0, 11, "0A")
            + row(local, f"{proc_hex('198.18.1.2')}:0050", 1000, 12)
            + row(local, remote, 1000, 13) + "   1: garbage\n")
    rows = list(socket_rows(text))
    assert [r.inode for r in rows] == [11, 12, 13]
    exact = find_row(text, local, remote)
    assert exact is not None and (exact.uid, exact.inode) == (1000, 13)
    assert find_row(text, local, f"{proc_hex('198.18.9.9')}:0050") is None
    assert find_row(text, local, remote[:-1]) is None, "whole fields only"


def test_an_unconnected_udp_sender_is_found_by_its_port() -> None:
    text = TCP_HEADER + row("00000000:1388", "00000000:0000", 7, 21, "07")
    local, remote = f"{proc_hex('198.18.4.2')}:1388", f"{proc_hex('198.18.1.1')}:0035"
    found = find_row(text, local, remote, ("00000000:1388", "00000000:0000"))
    assert found is not None and found.inode == 21
    assert find_row(text, local, remote) is None, "TCP: only the exact tuple"


def test_local_addresses_of_a_namespace() -> None:
    assert local_addresses(FIB_TRIE, IF_INET6) == {"198.18.4.2", "fd00:18:4::2"}


@given(st.text(), st.text())
def test_the_parsers_take_any_text(fib: str, table: str) -> None:
    local_addresses(fib, table)
    list(socket_rows(table))
    find_row(table, "0100007F:0050", "00000000:0000", ("00000000:0050", "00000000:0000"))


def fake_proc(root: Path, pid: int, space: str, fib: str = "", inet6: str = "",
              tcp: str = "", fds: dict[int, str] | None = None) -> None:
    base = root / str(pid)
    (base / "ns").mkdir(parents=True)
    os.symlink(space, base / "ns" / "net")
    (base / "net").mkdir()
    (base / "net" / "fib_trie").write_text(fib)
    (base / "net" / "if_inet6").write_text(inet6)
    (base / "net" / "tcp").write_text(TCP_HEADER + tcp)
    (base / "net" / "tcp6").write_text(TCP_HEADER)
    (base / "fd").mkdir()
    for fd, target in (fds or {}).items():
        os.symlink(target, base / "fd" / str(fd))


def test_a_namespace_is_found_by_its_address_and_misses_do_not_rescan_per_flow(
        tmp_path: Path) -> None:
    now = [100.0]
    os.symlink("1", tmp_path / "self")
    fake_proc(tmp_path, 1, "net:[1]", FIB_TRIE, IF_INET6,  # the engine's own: never a match
              row(f"{proc_hex('198.18.4.2')}:C350", f"{proc_hex('198.18.1.1')}:0050", 0, 5))
    spaces = Namespaces(str(tmp_path), clock=lambda: now[0])
    args = ("tcp", socket.AF_INET, "198.18.4.2", 0xC350, "198.18.1.1", 80)
    assert spaces.find(*args) is None and spaces.rescans == 1
    fake_proc(tmp_path, 40, "net:[7]", FIB_TRIE, IF_INET6,
              row(f"{proc_hex('198.18.4.2')}:C350", f"{proc_hex('198.18.1.1')}:0050", 0, 77))
    now[0] += 0.5
    assert spaces.find(*args) is None and spaces.rescans == 1, "this address missed just now"
    now[0] += 0.6
    found = spaces.find(*args)
    assert found is not None and (found.uid, found.inode, found.space, found.pids) == (
        0, 77, "net:[7]", (40,))
    assert spaces.find(*args) == found and spaces.rescans == 2, "no scan for a known address"
    # a VM's address: one scan, then none for a while; another address may scan soon after
    vm = ("tcp", socket.AF_INET, "198.18.4.9", 0xC350, "198.18.1.1", 80)
    assert spaces.find(*vm) is None and spaces.rescans == 2, "a scan a moment ago"
    now[0] += 0.1
    assert spaces.find(*vm) is None and spaces.rescans == 3
    assert spaces.find(*vm) is None and spaces.rescans == 3
    now[0] += 0.1
    assert spaces.find("tcp", socket.AF_INET, "198.18.4.8", 1, "198.18.1.1", 80) is None
    assert spaces.rescans == 4
    # a process that joined the namespace since: read at once
    fake_proc(tmp_path, 41, "net:[7]", FIB_TRIE, IF_INET6)
    assert spaces.refresh("net:[7]") == (41, 40) and spaces.rescans == 5
    # every process known of it exited, the next program sends: read at once too
    for pid in (40, 41):
        shutil.rmtree(tmp_path / str(pid))
    fake_proc(tmp_path, 42, "net:[7]", FIB_TRIE, IF_INET6,
              row(f"{proc_hex('198.18.4.2')}:C351", f"{proc_hex('198.18.1.1')}:0050", 0, 78))
    found = spaces.find("tcp", socket.AF_INET, "198.18.4.2", 0xC351, "198.18.1.1", 80)
    assert found is not None and found.pids == (42,) and spaces.rescans == 6
