"""`nfguard run`: the loop and its signals; the services, reload and control requests are
wired in (wiring, reloader, control_handlers).

The loop waits on the queue socket, a signal wake-up socket and the control socket
together, so SIGTERM and SIGINT stop it cleanly between packets and the audit buffer is
flushed on the way out. The ruleset stays in place after exit: with fail closed, no new
flow leaves while the engine is down. SIGHUP asks the reloader for a reload; the loop
applies it between two packets once it is built (see reloader). SIGUSR1 reopens the audit
file and does nothing else (logrotate's postrotate: the policy is not re-read). A batch of
packets with a deny in it is written out at once, so `nfguard log -f` shows it.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from types import FrameType
from typing import Any

from nfguard.control_handlers import Handlers, status_handler, status_report
from nfguard.names.listing import names_handler
from nfguard.policy.collector import for_service
from nfguard.reloader import Reloader
from nfguard.sdnotify import Notifier
from nfguard.wiring import Services, build_services
from nfguard.workers import WorkerLink, send_report

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0  # seconds between audit buffer flushes
SWEEP_INTERVAL = 0.25  # seconds between checks for pending flows past names.hello_timeout
RECENT_ERRORS = 10  # error log lines `nfguard status` shows


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


class Daemon:
    """One engine process: the main one (worker None) or a worker bound to its own queue."""

    def __init__(self, config_path: str, worker: WorkerLink | None = None) -> None:
        self.config_path = config_path
        self.worker = worker  # None: the main process (installs, serves metrics and control)
        self._stop = False
        self._sighup = False
        self._sigusr1 = False
        self._errors = RecentErrors()
        self.started_at = time.time()
        self.notifier = Notifier()

    def run(self) -> int:
        # From the start: logrotate may signal while the policy is still being built, and
        # SIGUSR1's default action would end the process.
        signal.signal(signal.SIGUSR1, self._on_signal)
        for_service()
        self.services = services = build_services(self.config_path, self.worker)
        self.reloader = reloader = Reloader(services, self.notifier)
        self.handlers = self._handlers()
        logging.getLogger().addHandler(self._errors)
        try:
            services.listen(self.handlers)
            self._loop(services)
        finally:
            self.notifier.stopping()
            if services.control is not None:
                reloader.abandon({"ok": False, "error": "nfguard stopped before the "
                                  "reload was applied; the policy is as it was"})
            services.close()
            logging.getLogger().removeHandler(self._errors)
            log.info("stopped; the ruleset stays in place (fail %s)",
                     services.config.engine.fail)
            self.notifier.close()
        return 0

    def _handlers(self) -> Handlers:
        """The control socket's requests; a feature with requests of its own adds them here."""
        handlers = Handlers()
        handlers.add("status", status_handler(self.status))
        handlers.add("reload", self.reloader.on_request)
        handlers.add("names", names_handler(self.services.pipeline.learner))
        if self.services.exec is not None:
            for command, handler in self.services.exec.handlers().items():
                handlers.add(command, handler)
        return handlers

    # -- the loop ------------------------------------------------------------------------
    def _loop(self, services: Services) -> None:
        pipeline, queue, control = services.pipeline, services.queue, services.control
        guard, reloader = services.guard, self.reloader
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        reloader.wake = wake_w
        previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        previous_handlers = {sig: signal.signal(sig, self._on_signal)
                             for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                         signal.SIGUSR1)}
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
        team = services.team
        if team is not None:
            for fd, reports in team.report_fds():
                selector.register(fd, selectors.EVENT_READ, reports.read)
        if control is not None:
            control.register(selector)
        if guard is not None:
            selector.register(guard.fileno(), selectors.EVENT_READ, guard.read)
        log.info("engine bound to queue %d", services.queue_num)
        waiting_for_workers = team is not None
        if self.worker is not None:
            self._report()
        elif not waiting_for_workers:
            self.notifier.ready(services.summary())
        watchdog = self.notifier.watchdog_interval
        next_flush = time.monotonic() + FLUSH_INTERVAL
        next_ping = time.monotonic()
        denies_written = pipeline.denies.total
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
                if pipeline.denies.total != denies_written:
                    denies_written = pipeline.denies.total
                    services.audit.flush()  # a deny reaches the file (`nfguard log -f`) now
                if self._sigusr1:
                    self._sigusr1 = False
                    self._reopen_audit()
                pipeline.sweep()
                pipeline.trusted.tend()  # resolv.conf looked at here, not per packet
                pipeline.hostnets.tend()  # and the host's networks ([names] private)
                services.attributor.poll_events()  # keep the kernel's event buffer drained
                if team is not None:
                    team.tend()
                    if waiting_for_workers and len(team.snapshots()) == len(team.workers):
                        waiting_for_workers = False
                        log.info("all %d workers bound to their queues", team.count)
                        self.notifier.ready(services.summary())
                if self._sighup:
                    self._sighup = False
                    reloader.request(None)
                reloader.tend()
                if time.monotonic() >= next_flush:
                    services.audit.flush()
                    if self.worker is not None:
                        self._report()
                    if control is not None:
                        control.expire()
                    if guard is not None:
                        guard.tend()
                    if services.exec is not None:
                        services.exec.tend()  # exec clients whose command is over
                    next_flush = time.monotonic() + FLUSH_INTERVAL
        finally:
            reloader.wake = None
            selector.close()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def _report(self) -> None:
        """A worker's counters, for the main process to add up (metrics, status)."""
        assert self.worker is not None
        services = self.services
        latency = services.sources.latency
        send_report(self.worker.report, {
            "queue": services.queue_num, "pid": os.getpid(), "stats": services.pipeline.stats,
            "latency": (list(latency.counts), latency.total_ns),
            "attribution": services.attributor.stats(), "queue_errors": services.queue.errors,
            "audit": services.audit.figures(), "denies": services.pipeline.denies})

    def _reopen_audit(self) -> None:
        """SIGUSR1: continue in a new audit file at the same path; each worker reopens
        its own when the main process passes the signal on."""
        audit = self.services.audit
        audit.reopen()
        log.info("audit file %s reopened", audit.path)
        if self.services.team is not None:
            self.services.team.signal(signal.SIGUSR1)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._sighup = True
        elif signum == signal.SIGUSR1:
            self._sigusr1 = True
        else:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self._stop = True

    def status(self) -> dict[str, Any]:
        """What `nfguard status` shows (control_handlers.status_report)."""
        return status_report(self.services, started_at=self.started_at,
                             last_rejection=self.reloader.last_rejection,
                             errors=self._errors.lines)


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(64):
            pass
    except BlockingIOError:
        pass

