"""`nfguard run`: load, install the ruleset, bind the queue, loop; reload on SIGHUP.

The loop waits on the queue socket, a signal wake-up socket and the control socket
together, so SIGTERM and SIGINT stop it cleanly between packets and the audit buffer is
flushed on the way out. The ruleset stays in place after exit: with fail closed, no new
flow leaves while the engine is down.

A reload (SIGHUP, `nfguard reload`) builds the new config and policy in a worker thread
while the loop keeps answering packets, then swaps the engine in one assignment between two
packets: no queued packet waits for a policy to compile, and none is decided by half of
one. A config or policy with any error is rejected whole (file and line in the log and in
the reply); the running policy stays. Flows already decided keep their verdict (it lives
in the kernel's ct mark); flows waiting for a name keep their state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from nfguard import __version__
from nfguard.audit import AuditLog
from nfguard.config import Config, load_config
from nfguard.control import ControlServer, Reply
from nfguard.engine import Engine
from nfguard.metrics import Latency, Sources, Stats, serve
from nfguard.names.inject import Refusals
from nfguard.names.peers import Peers
from nfguard.names.queries import queued
from nfguard.names.resolvers import TrustedServers
from nfguard.nft import PATH_DESCRIPTIONS, CounterReader, Installer, Ruleset, render
from nfguard.pipeline import Pipeline, make_name_cache
from nfguard.policy.collector import collector_paused
from nfguard.policy.load import PolicyError, load_policy_dir
from nfguard.policy.match import CompiledPolicySet
from nfguard.procs import Attributor
from nfguard.procs.containers import Containers
from nfguard.queue import QueueAdapter
from nfguard.ruleset_watch import RulesetGuard, open_events
from nfguard.sdnotify import Notifier
from nfguard.undecided import Undecided, set_verdicts
from nfguard.workers import Team, WorkerLink, send_report

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0  # seconds between audit buffer flushes
SWEEP_INTERVAL = 0.25  # seconds between checks for pending flows past names.hello_timeout
RECENT_ERRORS = 10  # error log lines `nfguard status` shows
# Config keys a reload cannot apply: the ruleset, the queue binding and the listeners.
RESTART_KEYS = (("engine", "queue"), ("engine", "fail"), ("engine", "filter_loopback"),
                ("engine", "forward_from"), ("engine", "queue_maxlen"), ("engine", "workers"),
                ("engine", "new_flows_per_user"),
                ("metrics", "listen"), ("metrics", "tls_cert"), ("metrics", "tls_key"),
                ("control", "socket"), ("containers", "docker_root"),
                ("containers", "podman_root"), ("containers", "containerd_state"),
                ("containers", "crio_runroot"))


def build_engine(config: Config, resolvers: TrustedServers | None = None) -> Engine:
    """Config + every policy file -> a ready engine; raises PolicyError naming file and line.
    `resolvers`: the running daemon's (a reload configures it); None: the host's now."""
    resolvers = resolvers or TrustedServers(config.names.resolvers)
    return Engine(config.engine, compile_policy_dir(config.engine.policy_dir),
                  verify=config.names.verify, resolvers=resolvers.serves)


def compile_policy_dir(directory: str | Path) -> CompiledPolicySet:
    """Read, check and compile every policy file, as at start and on reload, in one
    collector pause (see policy.collector: what the build made is frozen at its end)."""
    with collector_paused():
        return CompiledPolicySet(load_policy_dir(directory))


class RecentErrors(logging.Handler):
    """Keeps the last error log lines (one line each) for `nfguard status`."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: deque[tuple[float, str]] = deque(maxlen=RECENT_ERRORS)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message += f": {type(exc).__name__}: {exc}"
            self.lines.append((record.created, message))
        except Exception:
            self.handleError(record)


@dataclass
class _Reload:
    """One build of config + engine in a worker thread, and who waits for its outcome."""

    waiters: list[Reply]
    result: tuple[Config, Engine] | Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Daemon:
    def __init__(self, config_path: str, worker: WorkerLink | None = None) -> None:
        self.config_path = config_path
        self.worker = worker  # None: the main process (installs, serves metrics and control)
        self.team: Team | None = None
        self.guard: RulesetGuard | None = None  # the main process's (nfguard.ruleset_watch)
        self._stop = False
        self._sighup = False
        self._reload: _Reload | None = None  # the build running now
        self._reload_waiters: list[Reply] = []  # for the build after it
        self._reload_again = False
        self._last_rejection: tuple[float, str] | None = None
        self._errors = RecentErrors()
        self._wake_w: socket.socket | None = None
        self.started_at = time.time()
        self.notifier = Notifier()

    def run(self) -> int:
        config = load_config(self.config_path)
        resolvers = TrustedServers(config.names.resolvers)
        engine = build_engine(config, resolvers)
        worker = self.worker
        if worker is None:
            installer = Installer()
            self.queue_path = installer.probe_path()
            enforcing = config.engine.mode == "enforce" and config.engine.fail == "closed"
            self.guard = RulesetGuard(self._ruleset(config, engine), installer,
                                      open_events(), Undecided().cut if enforcing else None)
            self.guard.install()
            log.info("ruleset installed; queue path: %s", PATH_DESCRIPTIONS[self.queue_path])
        else:
            self.queue_path = worker.queue_path
        queue_num = config.engine.queue + (worker.index if worker is not None else 0)
        log.info("policy: %d clients, %d policies, %d rules; mode %s, default %s, fail %s",
                 len(engine.policies.clients), len(engine.policies.policies),
                 engine.policies.source.rule_count, config.engine.mode, config.engine.default,
                 config.engine.fail)
        self.config = config
        stats = Stats(policy_loaded_at=time.time(), policy_rules=engine.policies.source.rule_count)
        self.audit = AuditLog(config.audit.path, config.audit.format)
        self.attributor = attributor = Attributor(containers=Containers(config.containers))
        log.info("attribution: cgroup v2 at %s; process events %s; socket owners recorded "
                 "by eBPF: %s; execs seen: %s",
                 attributor.cgroup_root or "(not mounted: by owner uid)",
                 "on" if attributor.live_members else "off (cgroup.procs read per miss)",
                 "on" if attributor.recorded_owners
                 else f"off ({attributor.owners_error}; /proc searched)", attributor.exec_times)
        # The name cache lives as long as the daemon: reloads keep what DNS taught it.
        if worker is None and config.engine.workers > 1:
            self.team = Team(self.config_path, config.engine.workers, self.queue_path,
                             verbose=log.isEnabledFor(logging.DEBUG)).start()
        peers = (worker.peers() if worker is not None
                 else Peers(self.team.inbox, self.team.outboxes) if self.team is not None
                 else None)
        refusals = Refusals()  # the raw sockets that answer refused DNS queries
        pipeline = Pipeline(engine, self.audit, stats, names=make_name_cache(config.names),
                            settings=config.names, attributor=attributor, peers=peers,
                            trusted=resolvers, refusals=refusals)
        pipeline.set_verdicts = set_verdicts  # flows that sent nothing by hello_timeout
        self.pipeline = pipeline
        latency = Latency()
        queue = QueueAdapter(queue_num, pipeline.handle,
                             fail_open=config.engine.fail == "open",
                             maxlen=config.engine.queue_maxlen, latency=latency)
        pipeline.release = queue.release
        self.sources = Sources(stats, latency, queue=queue_num, names=pipeline.names,
                               attribution=attributor.stats, queue_errors=lambda: queue.errors,
                               workers=self.team.snapshots if self.team is not None else None,
                               restores=self.guard.count if self.guard else None,
                               kernel_counters=CounterReader() if worker is None else None)
        self.queue_num = queue_num
        logging.getLogger().addHandler(self._errors)
        metrics_server = control = None
        try:
            if worker is None:
                metrics_server = serve(config.metrics, self.sources)
                if config.control.socket:
                    control = ControlServer(config.control.socket, self._on_request)
            self._loop(queue, control)
        finally:
            self.notifier.stopping()
            if self.team is not None:
                self.team.stop()
            queue.close()
            if self.guard is not None:
                self.guard.close()
            attributor.close()
            refusals.close()
            self.audit.close()
            if control is not None:
                self._answer_reload_waiters({"ok": False, "error": "nfguard stopped before the "
                                             "reload was applied; the policy is as it was"})
                control.close()
            if metrics_server is not None:
                metrics_server.shutdown()  # type: ignore[attr-defined]
            logging.getLogger().removeHandler(self._errors)
            log.info("stopped; the ruleset stays in place (fail %s)", config.engine.fail)
            self.notifier.close()
        return 0

    # -- the loop ------------------------------------------------------------------------
    def _loop(self, queue: QueueAdapter, control: ControlServer | None) -> None:
        pipeline = self.pipeline
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake_w = wake_w
        previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        handlers = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        selector = selectors.DefaultSelector()

        def on_queue() -> None:
            # What other workers learnt from DNS first: a flow may use those names.
            pipeline.receive_peers()
            queue.process_pending()

        selector.register(queue.fileno(), selectors.EVENT_READ, on_queue)
        selector.register(wake_r, selectors.EVENT_READ, lambda: _drain(wake_r))
        if pipeline.peers is not None:
            selector.register(pipeline.peers.fileno(), selectors.EVENT_READ,
                              pipeline.receive_peers)
        team = self.team
        if team is not None:
            for fd, reports in team.report_fds():
                selector.register(fd, selectors.EVENT_READ, reports.read)
        if control is not None:
            control.register(selector)
        if self.guard is not None:
            selector.register(self.guard.fileno(), selectors.EVENT_READ, self.guard.read)
        log.info("engine bound to queue %d", self.queue_num)
        waiting_for_workers = team is not None
        if self.worker is not None:
            self._report(queue)
        elif not waiting_for_workers:
            self.notifier.ready(self._summary())
        watchdog = self.notifier.watchdog_interval
        next_flush = time.monotonic() + FLUSH_INTERVAL
        next_ping = time.monotonic()
        try:
            while not self._stop:
                now = time.monotonic()
                if watchdog is not None and now >= next_ping:
                    self.notifier.watchdog()
                    next_ping = now + watchdog
                # While flows wait for a name, wake often enough to honour hello_timeout.
                timeout = SWEEP_INTERVAL if pipeline.flows.waiting else FLUSH_INTERVAL
                if watchdog is not None:
                    timeout = max(0.0, min(timeout, next_ping - now))
                for key, _ in selector.select(timeout):
                    key.data()
                pipeline.sweep()
                pipeline.trusted.tend()  # resolv.conf looked at here, not per packet
                self.attributor.poll_events()  # keep the kernel's event buffer drained
                if team is not None:
                    team.tend()
                    if waiting_for_workers and len(team.snapshots()) == len(team.workers):
                        waiting_for_workers = False
                        log.info("all %d workers bound to their queues", team.count)
                        self.notifier.ready(self._summary())
                if self._sighup:
                    self._sighup = False
                    self._request_reload(None)
                if self._reload is not None and self._reload.done.is_set():
                    self._finish_reload()
                if time.monotonic() >= next_flush:
                    self.audit.flush()
                    if self.worker is not None:
                        self._report(queue)
                    if control is not None:
                        control.expire()
                    if self.guard is not None:
                        self.guard.tend()
                    next_flush = time.monotonic() + FLUSH_INTERVAL
        finally:
            self._wake_w = None
            selector.close()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def _report(self, queue: QueueAdapter) -> None:
        """A worker's counters, for the main process to add up (metrics, status)."""
        assert self.worker is not None
        latency = self.sources.latency
        send_report(self.worker.report, {
            "queue": self.queue_num, "pid": os.getpid(), "stats": self.pipeline.stats,
            "latency": (list(latency.counts), latency.total_ns),
            "attribution": self.attributor.stats(), "queue_errors": queue.errors})

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._sighup = True
        else:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self._stop = True

    # -- reload --------------------------------------------------------------------------
    def _request_reload(self, reply: Reply | None) -> None:
        """Start a build now, or after the running one (the files may have changed since
        it read them); `reply` gets the outcome of the build that includes this request."""
        if reply is not None:
            self._reload_waiters.append(reply)
        if self._reload is not None:
            self._reload_again = True
            return
        self._start_build()

    def _start_build(self) -> None:
        job = _Reload(self._reload_waiters)
        self._reload_waiters = []
        self._reload_again = False
        self._reload = job
        self.notifier.reloading()
        threading.Thread(target=self._build, args=(job, self._wake_w), name="nfguard-reload",
                         daemon=True).start()

    def _build(self, job: _Reload, wake: socket.socket | None) -> None:
        """In the reload thread: read and compile; never touches the running state."""
        try:
            config = load_config(self.config_path)
            job.result = (config, build_engine(config, self.pipeline.trusted))
        except Exception as exc:
            job.result = exc
        job.done.set()
        if wake is not None:
            # The loop's select returns; if the socket is full or closed, the loop sees
            # `done` on its next turn anyway.
            with contextlib.suppress(OSError):
                wake.send(b"r")

    def _answer_reload_waiters(self, answer: dict[str, Any]) -> None:
        """Everyone waiting on a reload that will not be applied now."""
        waiters = self._reload_waiters + (self._reload.waiters if self._reload else [])
        self._reload_waiters = []
        for reply in waiters:
            reply.send(answer)

    def _finish_reload(self) -> None:
        job = self._reload
        assert job is not None and job.result is not None
        self._reload = None
        outcome = self._apply(job.result)
        self.notifier.ready(self._summary())
        for reply in job.waiters:
            reply.send(outcome)
        if self._reload_again or self._reload_waiters:
            self._start_build()

    def _apply(self, result: tuple[Config, Engine] | Exception) -> dict[str, Any]:
        """Swap in the new config and engine whole, or keep the running ones."""
        stats = self.pipeline.stats
        if isinstance(result, Exception):
            self.audit.reopen()  # log rotation works whatever state the policy is in
            stats.reload_failures += 1
            if isinstance(result, PolicyError):
                message = str(result)
                log.error("reload rejected, the running policy stays:\n%s", message)
            else:
                message = f"{type(result).__name__}: {result}"
                log.error("reload failed, the running policy stays: %s", message,
                          exc_info=result)
            self._last_rejection = (time.time(), message)
            return {"ok": False, "error": message}
        config, engine = result
        warnings = [
            f"{section}.{key} changed; restart nfguard to apply it"
            for section, key in RESTART_KEYS
            if getattr(getattr(config, section), key) != getattr(getattr(self.config, section),
                                                                key)
        ]
        for warning in warnings:
            log.warning("reload: %s", warning)
        pipeline = self.pipeline
        pipeline.engine = engine
        pipeline.configure(config.names)
        if self.guard is not None:
            # The running [engine] settings: those the ruleset is made of take a restart
            # (workers, queue, ...); only whether DNS queries are judged changes here.
            ruleset = self._ruleset(replace(config, engine=self.config.engine), engine)
            if ruleset != self.guard.ruleset:  # DNS queries judged now, or no longer
                self.guard.ruleset = ruleset
                self.guard.install()
        if (config.audit.path, config.audit.format) != (self.config.audit.path,
                                                        self.config.audit.format):
            old, self.audit = self.audit, AuditLog(config.audit.path, config.audit.format)
            pipeline.audit = self.audit
            old.close()
        else:
            self.audit.reopen()  # log rotation: continue in a new file at the same path
        self.config = config
        stats.reloads += 1
        if self.team is not None:
            self.team.signal(signal.SIGHUP)  # each worker reloads the same files itself
        stats.policy_loaded_at = time.time()
        stats.policy_rules = engine.policies.source.rule_count
        log.info("reloaded: %d rules", stats.policy_rules)
        return {"ok": True, "rules": stats.policy_rules, "warnings": warnings}

    def _ruleset(self, config: Config, engine: Engine) -> Ruleset:
        """The ruleset for this config; DNS queries queued only if some are judged."""
        return render(config.engine, self.queue_path,
                      queued(config.names.queries, engine.policies.clients))

    # -- control socket ------------------------------------------------------------------
    def _on_request(self, request: dict[str, Any], reply: Reply) -> dict[str, Any] | None:
        command = request["command"]
        if command == "status":
            return {"ok": True, "status": self.status()}
        if command == "reload":
            self._request_reload(reply)
            return None
        return {"ok": False, "error": f"unknown command {command!r} (status, reload)"}

    def _summary(self) -> str:
        engine = self.pipeline.engine
        return (f"{self.config.engine.mode}, {engine.policies.source.rule_count} rules, "
                f"queue {self.config.engine.queue}")

    def status(self) -> dict[str, Any]:
        """What `nfguard status` shows: plain data, rendered by nfguard.status."""
        config, pipeline, src = self.config, self.pipeline, self.sources
        stats = src.total_stats()
        policies = pipeline.engine.policies
        by_action: dict[str, int] = {}
        for (action, *_), count in dict(stats.decisions).items():
            by_action[action] = by_action.get(action, 0) + count
        kernels = src.kernel_queues()
        latency = src.total_latency()
        names = pipeline.names
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.started_at,
            "now": time.time(),
            "config": self.config_path,
            "mode": config.engine.mode,
            "default": config.engine.default,
            "fail": config.engine.fail,
            "queue": config.engine.queue,
            "queue_path": PATH_DESCRIPTIONS[self.queue_path],
            "forward_from": list(config.engine.forward_from),
            "policy": {
                "dir": config.engine.policy_dir,
                "files": len(policies.source.files),
                "clients": len(policies.clients),
                "policies": len(policies.policies),
                "rules": policies.source.rule_count,
                "loaded_at": stats.policy_loaded_at,
            },
            "reloads": {"ok": stats.reloads, "failed": stats.reload_failures,
                        "last_rejection": self._last_rejection},
            "decisions": by_action,
            "counters": {
                "packets": stats.packets,
                "unparseable": stats.unparseable,
                "pending_flows": stats.pending_flows,
                "hello_timeouts": stats.hello_timeouts,
                "dns_answers": stats.dns_answers,
                "engine_errors": stats.errors,
                "queue_errors": src.total_queue_errors(),
            },
            "pending_now": pipeline.flows.waiting,  # decided flows stay known, not waiting
            "ruleset": None if self.guard is None else self.guard.status(),
            "latency": {"p50": latency.quantile(0.5), "p99": latency.quantile(0.99)},
            "kernel_queue": None if not kernels else {
                "length": sum(k.length for k in kernels),
                "dropped": sum(k.dropped for k in kernels),
                "user_dropped": sum(k.user_dropped for k in kernels)},
            "workers": None if self.team is None else {
                "count": self.team.count, "alive": 1 + self.team.alive(),
                "restarts": self.team.restarts()},
            "names": {"entries": len(names), "hits": names.hits, "misses": names.misses,
                      "evictions": names.evictions, "resolvers": pipeline.trusted.describe(),
                      "untrusted_answers": stats.dns_untrusted,
                      "queries": config.names.queries, "queries_judged": stats.dns_queries,
                      "queries_refused": stats.dns_queries_refused},
            "attribution": src.total_attribution(),
            "audit": {"path": config.audit.path, "written": self.audit.written},
            "metrics": _metrics_url(config),
            "errors": list(self._errors.lines),
        }


def _metrics_url(config: Config) -> str | None:
    if not config.metrics.listen:
        return None
    scheme = "https" if config.metrics.tls_cert else "http"
    return f"{scheme}://{config.metrics.listen}/metrics"


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(64):
            pass
    except BlockingIOError:
        pass

