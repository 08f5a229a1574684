"""`engine.workers > 1`: more engine processes, one kernel queue each.

Python runs one thread at a time, so a second core needs a second process. The main
process (worker 0) installs the ruleset, serves metrics, status and reload, and starts
workers 1..N-1 as fresh `nfguard run --worker I` processes (exec, not a bare fork: nothing
of the parent's queue binding, sockets or caches leaks into them). Each worker binds
queue `engine.queue + I`; the ruleset picks the queue per flow (nfguard.nft: by a hash of
addresses and ports, or by the local port on the xt path), so all packets of a flow meet
the same worker.

What they share, through pipes the main process creates and keeps open (so a restarted
worker gets the same ones):
- DNS bindings (nfguard.names.peers): every worker's inbox, written before an answer is accepted;
- reports: each worker sends its counters to the main process once a second, which sums
  them for metrics and `nfguard status`.
A worker dies with the main process (PDEATHSIG); one that dies alone is restarted, and
until then its share of new flows gets the fail-mode treatment from the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from nfguard.names.peers import Peers

log = logging.getLogger(__name__)

ENV = "NFGUARD_WORKER"  # how a worker learns its pipes
RESTART_DELAY = 1.0  # seconds between restarts of a worker that keeps dying
STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1
_LENGTH = struct.Struct("!I")


@dataclass(frozen=True)
class WorkerLink:
    """What a worker process gets from the main one (through the environment)."""

    index: int
    inbox: int
    outboxes: tuple[int, ...]
    report: int
    queue_path: str

    def to_env(self) -> str:
        return json.dumps({"index": self.index, "inbox": self.inbox,
                           "outboxes": list(self.outboxes), "report": self.report,
                           "queue_path": self.queue_path})

    @classmethod
    def from_env(cls, text: str) -> WorkerLink:
        data = json.loads(text)
        return cls(int(data["index"]), int(data["inbox"]), tuple(data["outboxes"]),
                   int(data["report"]), str(data["queue_path"]))

    def peers(self) -> Peers:
        return Peers(self.inbox, self.outboxes)


def send_report(fd: int, snapshot: dict[str, Any]) -> bool:
    """One length-prefixed snapshot; skipped (False) when the main process is behind."""
    data = pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        os.write(fd, _LENGTH.pack(len(data)) + data)
    except (BlockingIOError, BrokenPipeError):
        return False
    return True


class ReportReader:
    """Reassembles one worker's snapshots; keeps the latest."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.latest: dict[str, Any] | None = None
        self._buffer = b""

    def read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buffer += chunk
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if len(self._buffer) < _LENGTH.size + size:
                break
            body = self._buffer[_LENGTH.size:_LENGTH.size + size]
            self._buffer = self._buffer[_LENGTH.size + size:]
            # only our own worker processes write this pipe
            self.latest = pickle.loads(body)


@dataclass
class _Worker:
    link: WorkerLink
    reports: ReportReader
    process: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0


@dataclass
class Team:
    """The main process's view of workers 1..N-1."""

    config_path: str
    count: int
    queue_path: str
    verbose: bool = False
    workers: list[_Worker] = field(default_factory=list)
    inbox: int = -1  # worker 0's (the main process's) DNS inbox
    outboxes: tuple[int, ...] = ()
    _fds: list[int] = field(default_factory=list)

    def start(self) -> Team:
        pipes = Peers.pipes(self.count)
        self._fds = [fd for pair in pipes for fd in pair]
        writes = [write for _read, write in pipes]
        self.inbox, self.outboxes = pipes[0][0], tuple(writes[1:])
        for index in range(1, self.count):
            report_r, report_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._fds += [report_r, report_w]
            outboxes = tuple(w for i, w in enumerate(writes) if i != index)
            link = WorkerLink(index, pipes[index][0], outboxes, report_w, self.queue_path)
            worker = _Worker(link, ReportReader(report_r))
            self.workers.append(worker)
            self._spawn(worker)
        return self

    def _spawn(self, worker: _Worker) -> None:
        link = worker.link
        env = {**os.environ, ENV: link.to_env()}
        env.pop("NOTIFY_SOCKET", None)  # only the main process talks to systemd
        env.pop("WATCHDOG_USEC", None)
        argv = [sys.executable, "-m", "nfguard", *(["-v"] if self.verbose else []), "run",
                "--config", self.config_path, "--worker", str(link.index)]
        worker.process = subprocess.Popen(
            argv, env=env, pass_fds=(link.inbox, *link.outboxes, link.report),
            preexec_fn=_die_with_parent)
        worker.started = time.monotonic()
        log.info("worker %d started (pid %d, queue offset %d)", link.index,
                 worker.process.pid, link.index)

    def report_fds(self) -> list[tuple[int, ReportReader]]:
        return [(w.reports.fd, w.reports) for w in self.workers]

    def snapshots(self) -> list[dict[str, Any]]:
        return [w.reports.latest for w in self.workers if w.reports.latest is not None]

    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)

    def alive(self) -> int:
        return sum(1 for w in self.workers if w.process is not None
                   and w.process.poll() is None)

    def tend(self) -> None:
        """Restart workers that died (not more than once per RESTART_DELAY each)."""
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is None or process.poll() is None:
                continue
            if now - worker.started < RESTART_DELAY:
                continue
            log.error("worker %d (pid %d) exited with %s; restarting it", worker.link.index,
                      process.pid, process.returncode)
            worker.restarts += 1
            worker.reports.latest = None
            self._spawn(worker)

    def signal(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM when the main process goes (even by kill -9)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
