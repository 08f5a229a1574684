"""The sender of a forwarded flow: its socket, found in the network namespace it came from.

A container's packet reaches the engine on the host's FORWARD hook, and the host's
sock_diag does not see sockets of other network namespaces. /proc does, without entering
them (setns would need CAP_SYS_ADMIN): /proc/PID/net/{tcp,udp}{,6} list the sockets of
PID's namespace with their owner uid and inode, and /proc/PID/net/fib_trie and if_inet6
its local addresses. So the flow's source address names the namespace, its exact tuple
the socket, and a search of that namespace's processes' fds the process (nfguard.procs).

Only an exact tuple names a socket: a container that sends with another one's source
address finds no socket of that tuple there (a new flow has none yet), so it is known by
its interface alone, never as the other container.

The table of namespaces is rebuilt from /proc (one readlink per process and two reads
per namespace: 0.6 ms for 77 processes in 4 namespaces) when a socket's process is not in
it or every process it knew of a namespace has exited (a container's next program), and
when a source address is not: then at most once per `min_interval`,
and for the same address once per `miss_ttl`, since a VM behind a bridge has no namespace
here and must not cost a scan per flow.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from nfguard.lru import Memo

__all__ = ["ForeignSocket", "Namespaces", "find_row", "local_addresses", "proc_hex",
           "socket_rows"]

_V4_IN_V6 = "0000000000000000FFFF0000"  # ::ffff:0:0/96 as /proc writes it (host order words)


class ForeignSocket(NamedTuple):
    """A socket of another network namespace, and the processes living in that namespace."""

    uid: int
    inode: int
    space: str  # the namespace, as its /proc/PID/ns/net link reads
    pids: tuple[int, ...]


class SocketRow(NamedTuple):
    local: str  # "ADDR:PORT" in /proc's hex form
    remote: str
    uid: int
    inode: int


def proc_hex(address: str) -> str:
    """An address as /proc/net writes it: 32-bit words in host byte order, hex upper case."""
    raw = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return raw.hex().upper()


def socket_rows(text: str) -> Iterator[SocketRow]:
    """The rows of a /proc/net/{tcp,udp}{,6} table; malformed rows are skipped."""
    for line in text.splitlines()[1:]:
        row = _row(line)
        if row is not None:
            yield row


def _row(line: str) -> SocketRow | None:
    fields = line.split()
    if len(fields) < 10:
        return None
    try:
        return SocketRow(fields[1], fields[2], int(fields[7]), int(fields[9]))
    except ValueError:
        return None


def local_addresses(fib_trie: str, if_inet6: str) -> set[str]:
    """A namespace's own addresses: the LOCAL /32 entries of its IPv4 FIB, and if_inet6.

    In fib_trie an address line (`|-- 198.18.4.2`) comes before its `/32 host LOCAL`."""
    found: set[str] = set()
    last = ""
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- ") or text.startswith("+-- "):
            last = text[4:].split("/")[0].split()[0]
        elif text == "/32 host LOCAL" and last:
            found.add(last)
    for line in if_inet6.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                found.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[0])))
            except ValueError:
                continue
    found.discard("127.0.0.1")
    found.discard("::1")
    return found


def find_row(text: str, local: str, remote: str,
             unconnected: tuple[str, str] | None = None) -> SocketRow | None:
    """The row of exactly (local, remote) in a socket table, found by a text search (a
    busy container's table has thousands of rows: parsing each costs a microsecond); else,
    given `unconnected` (its local address and port bound to any, and no remote: a UDP
    sender that used sendto), the first such row bound to that port."""
    at = text.find(f" {local} {remote} ")
    if at >= 0:
        end = text.find("\n", at)
        row = _row(text[text.rfind("\n", 0, at) + 1:end if end >= 0 else len(text)])
        if row is not None:
            return row
    if unconnected is None:
        return None
    any_local, nowhere = unconnected
    return next((row for row in socket_rows(text)
                 if row.remote == nowhere and row.local in (local, any_local)), None)


class Namespaces:
    """Network namespaces other than the engine's, by their addresses, read from /proc."""

    MAX_MISSES = 4096  # addresses remembered as having no namespace here

    def __init__(self, proc_root: str = "/proc", min_interval: float = 0.05,
                 miss_ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = proc_root
        self.min_interval = min_interval
        self.miss_ttl = miss_ttl
        self.clock = clock
        self.rescans = 0
        self._own = _netns(f"{proc_root}/self")
        self._by_address: dict[str, str] = {}  # address -> namespace id
        self._pids: dict[str, tuple[int, ...]] = {}  # namespace id -> its processes
        self._scanned_at: float | None = None
        # address -> when a scan last did not find it
        self._missed: Memo[str, float] = Memo(self.MAX_MISSES)

    def find(self, proto: str, family: int, src: str, sport: int, dst: str,
             dport: int) -> ForeignSocket | None:
        """The socket that sent (proto, src:sport → dst:dport) from another namespace."""
        space = self._by_address.get(src)
        gone = False
        if space is not None:
            found = self._socket(space, proto, family, src, sport, dst, dport)
            if found is not None:
                return found
            # every process known in it has exited (a build step's program, replaced by
            # the next): read anew at once, the namespace has others or is gone
            gone = not self._pids.get(space)
        now = self.clock()
        missed = self._missed.get(src)
        if not gone and ((missed is not None and now - missed < self.miss_ttl) or (
                self._scanned_at is not None and now - self._scanned_at < self.min_interval)):
            return None
        self._rescan(now)
        space = self._by_address.get(src)
        if space is None:
            self._missed.put(src, now)
            return None
        return self._socket(space, proto, family, src, sport, dst, dport)

    def refresh(self, space: str) -> tuple[int, ...]:
        """The namespace's processes read anew: one may have joined it since the last scan
        (a build step's next program, a `docker exec`); () when it is gone."""
        self._rescan(self.clock())
        return self._pids.get(space, ())

    def _socket(self, space: str, proto: str, family: int, src: str, sport: int, dst: str,
                dport: int) -> ForeignSocket | None:
        # an IPv4 flow's socket may be a dual-stack one, in the `6` table
        for six in (False, True) if family == socket.AF_INET else (True,):
            text = self._read_any(space, f"net/{proto}{'6' if six else ''}")
            if text is None:
                return None
            mapped = family == socket.AF_INET and six
            wide = 32 if six else 8
            unconnected = (f"{'0' * wide}:{sport:04X}", f"{'0' * wide}:0000")
            row = find_row(text, _hex_end(src, sport, mapped), _hex_end(dst, dport, mapped),
                           unconnected if proto == "udp" else None)
            if row is not None and row.inode:
                return ForeignSocket(row.uid, row.inode, space, self._pids[space])
        return None

    def _read_any(self, space: str, name: str) -> str | None:
        """A file of the namespace, read through the first of its processes still there;
        the ones found gone on the way are forgotten (none left: None)."""
        pids = self._pids.get(space, ())
        for at, pid in enumerate(pids):
            try:
                with open(f"{self.root}/{pid}/{name}", encoding="ascii") as f:
                    text = f.read()
            except OSError:
                continue
            if at:
                self._pids[space] = pids[at:]
            return text
        self._pids[space] = ()
        return None

    def _rescan(self, now: float) -> None:
        """Rebuild the table from /proc."""
        self._scanned_at = now
        self.rescans += 1
        members: dict[str, list[int]] = {}
        for entry in os.scandir(self.root):
            if entry.name.isdigit():
                space = _netns(entry.path)
                if space is not None and space != self._own:
                    members.setdefault(space, []).append(int(entry.name))
        self._pids = {space: tuple(sorted(found, reverse=True))  # newest first
                      for space, found in members.items()}
        by_address: dict[str, str] = {}
        for space in members:
            fib = self._read_any(space, "net/fib_trie") or ""
            six = self._read_any(space, "net/if_inet6") or ""
            for address in local_addresses(fib, six):
                by_address.setdefault(address, space)
        self._by_address = by_address


def _hex_end(address: str, port: int, mapped: bool) -> str:
    return f"{_V4_IN_V6 if mapped else ''}{proc_hex(address)}:{port:04X}"


def _netns(proc_dir: str) -> str | None:
    try:
        return os.readlink(f"{proc_dir}/ns/net")
    except OSError:
        return None
