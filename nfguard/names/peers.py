"""DNS bindings shared between engine workers.

With `engine.workers > 1` the kernel spreads flows over several queues (hashed on the two
addresses, so every packet of a flow meets the same worker), and a DNS answer reaches only
one worker. That worker writes what it learnt into every other worker's pipe *before* it
accepts the answer; a worker reads its pipe before each batch of packets. A client can only
connect after it got the answer, so the worker that sees the connection has the binding in
its pipe by then: the "learn before the client can use it" guarantee holds across workers.

A message is one address with the names one answer bound to it (a CNAME chain stays
together), as one JSON line of at most PIPE_BUF bytes, so writes from several workers never
interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
from collections.abc import Iterable, Sequence

import orjson

PIPE_BUF = select.PIPE_BUF  # writes up to this size are atomic
PIPE_SIZE = 1 << 20  # each inbox holds this much before a writer would have to wait

# (address, name, ttl) as nfguard.wire.dns gives them
Binding = tuple[str, str, int]


def encode(now: float, bindings: Iterable[Binding]) -> list[bytes]:
    """One line per address; an address with too many names for one line is split."""
    by_ip: dict[str, list[tuple[str, int]]] = {}
    for ip, name, ttl in bindings:
        by_ip.setdefault(ip, []).append((name, ttl))
    lines = []
    for ip, names in by_ip.items():
        chunk: list[tuple[str, int]] = []
        for item in names:
            candidate = orjson.dumps([now, ip, [*chunk, item]])
            if len(candidate) + 1 > PIPE_BUF and chunk:
                lines.append(orjson.dumps([now, ip, chunk]) + b"\n")
                chunk = []
            chunk.append(item)
        lines.append(orjson.dumps([now, ip, chunk]) + b"\n")
    return lines


def decode(line: bytes) -> tuple[float, list[Binding]]:
    """(time learnt, bindings of one address); ValueError on anything malformed."""
    try:
        now, ip, names = orjson.loads(line)
        return float(now), [(str(ip), str(name), int(ttl)) for name, ttl in names]
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"bad peer message: {line[:80]!r}") from exc


class Peers:
    """This worker's inbox and the other workers' inboxes (pipe fds made before the fork)."""

    def __init__(self, inbox: int, outboxes: Sequence[int]) -> None:
        self.inbox = inbox
        self.outboxes = tuple(outboxes)
        self.sent = 0
        self.dropped = 0  # lines a full inbox refused (that peer misses those names)
        self._partial = b""

    @staticmethod
    def pipes(count: int) -> list[tuple[int, int]]:
        """`count` non-blocking (read, write) pipes, one inbox per worker."""
        made = []
        for _ in range(count):
            read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            # above /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE: the default stays
            with contextlib.suppress(OSError):
                fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            made.append((read, write))
        return made

    def fileno(self) -> int:
        return self.inbox

    def publish(self, now: float, bindings: Iterable[Binding]) -> None:
        """Give every other worker what one DNS answer taught (never blocks)."""
        lines = encode(now, bindings)
        for fd in self.outboxes:
            for line in lines:
                try:
                    os.write(fd, line)
                    self.sent += 1
                except BlockingIOError:
                    self.dropped += 1
                except OSError:  # cannot happen while the main process holds every inbox
                    self.dropped += 1

    def receive(self) -> list[tuple[float, list[Binding]]]:
        """Everything the other workers published since the last call."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.inbox, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            return []
        data = self._partial + b"".join(chunks)
        *lines, self._partial = data.split(b"\n")
        out = []
        for line in lines:
            try:
                out.append(decode(line))
            except ValueError:
                continue  # only workers write here; a bad line is skipped, not fatal
        return out
