"""The private engine of one `nfguard exec` when no service runs: the service's Engine
and Pipeline, fed by a queue of its own that only the command's flows reach.

Each exec holds a slot (a lock file under /run/nfguard/exec): its number gives the table
name, the ct label and the queue number, so concurrent execs never share one, and a slot
is reused only once its previous holder (and that one's watchdog) is gone, the least
recently used first (the conntrack entries of a finished command's UDP flows keep its
label for up to a few minutes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Any

from nfguard.audit import AuditLog
from nfguard.config import Config, EngineConfig
from nfguard.engine import Engine
from nfguard.exec.report import FlowRecord, from_event, tally
from nfguard.exec.ruleset import Scope
from nfguard.metrics.counts import Latency, Stats
from nfguard.names.inject import Refusals
from nfguard.names.resolvers import TrustedServers
from nfguard.pipeline import Pipeline, make_name_cache
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.model import PolicySet
from nfguard.procs import Attributor
from nfguard.procs.containers import Containers
from nfguard.queue import QueueAdapter
from nfguard.undecided import set_verdicts

SLOT_DIR = "/run/nfguard/exec"
SLOTS = 64  # execs at once on one host
QUEUE_BASE = 32000  # queue numbers QUEUE_BASE .. + SLOTS - 1, far from the service's
LABEL_BASE = 64  # ct labels LABEL_BASE .. + SLOTS - 1
FLUSH_INTERVAL = 1.0


class Slot:
    """A held slot number (the lock is released when the file is closed, by exec and
    by its watchdog both)."""

    def __init__(self, directory: str = SLOT_DIR) -> None:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        paths = [os.path.join(directory, f"slot-{number}.lock") for number in range(SLOTS)]
        for number in sorted(range(SLOTS), key=lambda n: _last_used(paths[n])):
            fd = os.open(paths[number], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.utime(fd)  # in use now: the last to be taken again
            self.number, self.fd = number, fd
            return
        raise RuntimeError(f"{SLOTS} nfguard exec commands already run on this host")

    def scope(self, cgroup: str, level: int) -> Scope:
        n = self.number
        return Scope(f"nfguard_exec_{n}", cgroup, level, LABEL_BASE + n, QUEUE_BASE + n,
                     f"nfguard exec {n}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _last_used(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


class RecordingLog(AuditLog):
    """The configured audit log, and the command's records beside it."""

    def __init__(self, path: str, fmt: str) -> None:
        super().__init__(path, fmt)
        self.seen: dict[tuple[Any, ...], FlowRecord] = {}
        self.takes_lines = False  # every event is read, as a dict

    def write(self, event: dict[str, Any]) -> None:
        record = from_event(event)
        if record is not None:
            self.seen[record.key] = tally([self.seen[record.key], record])[0] \
                if record.key in self.seen else record
        super().write(event)

    @property
    def records(self) -> list[FlowRecord]:
        return list(self.seen.values())


def engine_settings(config: Config, mode: str) -> EngineConfig:
    """The command's flows are judged deny-by-default, failing closed, whatever the host's
    own mode; `mode` is "enforce" or "audit"."""
    return EngineConfig(mode=mode, default="deny", fail="closed",
                        filter_loopback=config.engine.filter_loopback,
                        queue_maxlen=config.engine.queue_maxlen,
                        new_flows_per_user=config.engine.new_flows_per_user, forward_from=())


class PrivateEngine:
    def __init__(self, config: Config, policies: PolicySet, settings: EngineConfig,
                 queue: int, audit_path: str) -> None:
        self.config = config
        self.settings = settings
        self.resolvers = TrustedServers(config.names.resolvers)
        self.audit = RecordingLog(audit_path, config.audit.format)
        self.stats = Stats(policy_loaded_at=time.time())
        self.attributor = Attributor(containers=Containers(config.containers))
        self.refusals = Refusals()
        self.pipeline = Pipeline(self._engine(policies), self.audit, self.stats,
                                 names=make_name_cache(config.names), settings=config.names,
                                 attributor=self.attributor, trusted=self.resolvers,
                                 refusals=self.refusals)
        self.pipeline.set_verdicts = set_verdicts
        self.queue = QueueAdapter(queue, self.pipeline.handle, fail_open=False,
                                  maxlen=settings.queue_maxlen, latency=Latency())
        self.pipeline.release = self.queue.release
        self.pipeline.defer_events = True  # written after the verdicts of each batch
        self.queue.after_batch = self.pipeline.flush_events
        self._next_flush = time.monotonic() + FLUSH_INTERVAL

    def _engine(self, policies: PolicySet) -> Engine:
        return Engine(self.settings, CompiledPolicySet(policies),
                      verify=self.config.names.verify, resolvers=self.resolvers.serves)

    def swap(self, policies: PolicySet) -> None:
        """A reload: the new policy for the next decisions; what DNS taught stays."""
        self.pipeline.engine = self._engine(policies)

    def fileno(self) -> int:
        return self.queue.fileno()

    def on_packets(self) -> None:
        self.queue.process_pending()

    def tend(self) -> None:
        """Between packets: pending flows past their wait, resolv.conf, process events."""
        self.pipeline.sweep()
        self.resolvers.tend()
        self.attributor.poll_events()
        if time.monotonic() >= self._next_flush:
            self.audit.flush()
            self._next_flush = time.monotonic() + FLUSH_INTERVAL

    @property
    def waiting(self) -> bool:
        return bool(self.pipeline.flows.waiting)

    def close(self) -> list[FlowRecord]:
        self.queue.close()
        self.attributor.close()
        self.refusals.close()
        self.pipeline.flush_events()
        self.audit.close()
        return self.audit.records
