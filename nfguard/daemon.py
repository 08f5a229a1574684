"""`nfguard run`: load, install the ruleset, bind the queue, loop; reload on SIGHUP.

The loop waits on the queue socket and a signal wake-up socket together, so SIGTERM and
SIGINT stop it cleanly between packets and the audit buffer is flushed on the way out.
The ruleset stays in place after exit: with fail closed, no new flow leaves while the
engine is down.
"""

from __future__ import annotations

import logging
import selectors
import signal
import socket
import time
from types import FrameType

from nfguard.audit import AuditLog
from nfguard.config import Config, load_config
from nfguard.engine import Engine
from nfguard.metrics import Stats, serve
from nfguard.nft import PATH_DESCRIPTIONS, Installer, render
from nfguard.pipeline import Pipeline, configure_name_cache, make_name_cache
from nfguard.policy.load import PolicyError, load_policy_dir
from nfguard.policy.match import CompiledPolicySet
from nfguard.procs import Attributor
from nfguard.queue import QueueAdapter

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0  # seconds between audit buffer flushes
SWEEP_INTERVAL = 0.25  # seconds between checks for pending flows past names.hello_timeout


def build_engine(config: Config) -> Engine:
    """Config + every policy file -> a ready engine; raises PolicyError naming file and line."""
    policies = load_policy_dir(config.engine.policy_dir)
    return Engine(config.engine, CompiledPolicySet(policies), verify=config.names.verify)


class Daemon:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self._stop = False
        self._reload = False

    def run(self) -> int:
        config = load_config(self.config_path)
        engine = build_engine(config)
        installer = Installer()
        path = installer.probe_path()
        installer.install(render(config.engine, path))
        log.info("ruleset installed; queue path: %s", PATH_DESCRIPTIONS[path])
        log.info("policy: %d clients, %d policies, %d rules; mode %s, default %s, fail %s",
                 len(engine.policies.clients), len(engine.policies.policies),
                 engine.policies.source.rule_count, config.engine.mode, config.engine.default,
                 config.engine.fail)
        stats = Stats()
        audit = AuditLog(config.audit.path, config.audit.format)
        # The name cache lives as long as the daemon: reloads keep what DNS taught it.
        attributor = Attributor()
        log.info("attribution: cgroup v2 at %s; process events %s",
                 attributor.cgroup_root or "(not mounted: by owner uid)",
                 "on" if attributor.live_members else "off (cgroup.procs read per miss)")
        pipeline = Pipeline(engine, audit, stats, names=make_name_cache(config.names),
                            settings=config.names, attributor=attributor)
        metrics_server = serve(config.metrics.listen, stats)
        queue = QueueAdapter(config.engine.queue, pipeline.handle,
                             fail_open=config.engine.fail == "open")
        pipeline.release = queue.release
        self.config = config
        try:
            self._loop(queue, pipeline, audit, attributor)
        finally:
            queue.close()
            attributor.close()
            audit.close()
            if metrics_server is not None:
                metrics_server.shutdown()  # type: ignore[attr-defined]
            log.info("stopped; the ruleset stays in place (fail %s)", config.engine.fail)
        return 0

    def _loop(self, queue: QueueAdapter, pipeline: Pipeline, audit: AuditLog,
              attributor: Attributor) -> None:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        handlers = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        selector = selectors.DefaultSelector()
        selector.register(queue.fileno(), selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        log.info("engine bound to queue %d", self.config.engine.queue)
        next_flush = time.monotonic() + FLUSH_INTERVAL
        try:
            while not self._stop:
                # While flows hold packets, wake often enough to honour hello_timeout.
                timeout = SWEEP_INTERVAL if pipeline.flows.holding else FLUSH_INTERVAL
                for key, _ in selector.select(timeout):
                    if key.fileobj is wake_r:
                        _drain(wake_r)
                    else:
                        queue.process_pending()
                pipeline.sweep()
                attributor.poll_events()  # keep the kernel's process-event buffer drained
                if self._reload:
                    self._reload = False
                    self._do_reload(pipeline, audit)
                if time.monotonic() >= next_flush:
                    audit.flush()
                    next_flush = time.monotonic() + FLUSH_INTERVAL
        finally:
            selector.close()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self._stop = True

    def _do_reload(self, pipeline: Pipeline, audit: AuditLog) -> None:
        """Swap in the new policy whole, or keep the running one if anything is wrong."""
        try:
            config = load_config(self.config_path)
            engine = build_engine(config)
        except PolicyError as exc:
            log.error("reload rejected, the running policy stays:\n%s", exc)
            return
        restart_needed = [
            key for key in ("queue", "fail", "filter_loopback")
            if getattr(config.engine, key) != getattr(self.config.engine, key)
        ]
        if restart_needed:
            log.warning("reload: engine.%s changed; restart nfguard to apply it",
                        ", engine.".join(restart_needed))
        pipeline.engine = engine
        pipeline.settings = config.names
        configure_name_cache(pipeline.names, config.names)  # what it learnt stays
        audit.reopen()
        log.info("reloaded: %d rules", engine.policies.source.rule_count)


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(64):
            pass
    except BlockingIOError:
        pass
