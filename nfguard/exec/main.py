"""`nfguard exec`: the order of things, and the way out whatever happens.

Standalone (no service): slot, cgroup, watchdog, ruleset, queue, then the command; the
loop answers the command's packets until it exits, reloads the policy when its file
changes; then the command's other processes are killed, the ruleset and the cgroup
removed, and the summary printed. With the service running, the service judges the
command as a transient client instead (nfguard.exec.service).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import selectors
import signal
import socket
import sys
import time
from types import FrameType

from nfguard.config import Config, load_config
from nfguard.exec import report
from nfguard.exec.cgroup import Cgroup, CgroupError
from nfguard.exec.command import (
    FORWARDED,
    NOT_FOUND,
    TERMINAL,
    Child,
    StartError,
    caller,
    spawn,
    terminal_signal_direct,
)
from nfguard.exec.engine import PrivateEngine, Slot, engine_settings
from nfguard.exec.policy import Documents, compose, read_documents
from nfguard.exec.ruleset import install, render_scoped, uninstall
from nfguard.exec.watch import PolicyWatcher
from nfguard.exec.watchdog import Watchdog
from nfguard.nft import Installer
from nfguard.policy.load import PolicyError
from nfguard.policy.model import PolicySet

FAILURE = 125  # nfguard exec itself failed (as env, timeout and chroot say it)
TICK = 0.25  # seconds between the loop's chores


def run(args: argparse.Namespace) -> int:
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        print("nfguard exec: no command given (nfguard exec [options] -- COMMAND)",
              file=sys.stderr)
        return 2
    config = load_config(args.config) if os.path.exists(args.config) else Config()
    try:
        documents = read_documents(args.policy) if args.policy else []
        policies = compose(documents, args.allow, args.allow_all)
    except PolicyError as exc:
        print(f"nfguard exec: the policy has errors, nothing was run:\n{exc}", file=sys.stderr)
        return FAILURE
    if os.geteuid() != 0:
        print("nfguard exec: needs root (sudo nfguard exec ...) to run the command under "
              "its own policy; or the nfguard service running, with its control socket "
              f"({config.control.socket}) writable by you (a group of yours)",
              file=sys.stderr)
        return FAILURE
    audit_path = config.audit.path if os.path.exists(args.config) else os.devnull
    return Standalone(args, argv, config, documents, policies, audit_path).run()


class Standalone:
    def __init__(self, args: argparse.Namespace, argv: list[str], config: Config,
                 documents: Documents, policies: PolicySet, audit_path: str) -> None:
        self.args, self.argv, self.config = args, argv, config
        self.documents, self.policies, self.audit_path = documents, policies, audit_path
        self.mode = "audit" if args.audit else "enforce"
        self.child: Child | None = None

    def run(self) -> int:
        settings = engine_settings(self.config, self.mode)
        slot = Slot()
        try:
            cgroup = Cgroup.create(f"{slot.number}-{os.getpid()}-{secrets.token_hex(3)}")
        except CgroupError as exc:
            slot.close()
            print(f"nfguard exec: {exc}", file=sys.stderr)
            return FAILURE
        scope = slot.scope(cgroup.path, cgroup.level)
        ruleset = render_scoped(settings, Installer().probe_path(), True, scope)

        def cleanup() -> None:
            cgroup.kill()
            uninstall(ruleset, scope)
            with contextlib.suppress(OSError):
                cgroup.remove()

        watchdog = Watchdog(cleanup, keep_fds=(slot.fd,))
        engine = None
        try:
            install(ruleset, scope, cgroup.root)
            engine = PrivateEngine(self.config, self.policies, settings, scope.queue,
                                   self.audit_path)
            status = self._serve(engine, cgroup)
        except StartError as exc:
            print(f"nfguard exec: {exc.strerror}", file=sys.stderr)
            status = NOT_FOUND
        finally:
            records = engine.close() if engine is not None else []
            cleanup()
            watchdog.release()
            slot.close()
        self._report(records, engine)
        return status

    def _serve(self, engine: PrivateEngine, cgroup: Cgroup) -> int:
        wake_r, wake_w = socket.socketpair()
        for end in (wake_r, wake_w):
            end.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        pending: list[int] = []

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            pending.append(signum)

        passed = FORWARDED + (() if terminal_signal_direct() else TERMINAL)
        handlers = {sig: signal.signal(sig, on_signal) for sig in passed}
        if terminal_signal_direct():
            handlers.update({sig: signal.signal(sig, signal.SIG_IGN) for sig in TERMINAL})
        watcher = PolicyWatcher(self.args.policy, time.monotonic()) if self.args.policy else None
        selector = selectors.DefaultSelector()
        try:
            child = self.child = spawn(self.argv, cgroup, caller(dict(os.environ),
                                                                  self.args.as_root))
            selector.register(engine.fileno(), selectors.EVENT_READ, engine.on_packets)
            selector.register(child.pidfd, selectors.EVENT_READ, child.poll)
            selector.register(wake_r, selectors.EVENT_READ, lambda: _drain(wake_r))
            while child.poll() is None:
                for key, _ in selector.select(TICK):
                    key.data()
                    if child.status is not None:
                        break
                while pending:
                    child.signal(pending.pop(0))
                engine.tend()
                if watcher is not None and watcher.due(time.monotonic()):
                    self._reload(engine, watcher)
            assert child.status is not None
            return child.status
        finally:
            selector.close()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def _reload(self, engine: PrivateEngine, watcher: PolicyWatcher) -> None:
        watcher.reloaded()
        try:
            policies = compose(read_documents(self.args.policy), self.args.allow,
                               self.args.allow_all)
        except PolicyError as exc:
            print(f"nfguard exec: {self.args.policy} changed but has errors; the previous "
                  f"policy stays:\n{exc}", file=sys.stderr)
            return
        engine.swap(policies)
        print(f"nfguard exec: {self.args.policy} reloaded", file=sys.stderr)

    def _report(self, records: list[report.FlowRecord], engine: PrivateEngine | None) -> None:
        if self.args.audit:
            resolvers = engine.resolvers.serves if engine is not None else None
            print("nfguard exec: the command reached:\n" + (report.reached(records)
                                                            or "  (nothing)\n")
                  + "nfguard exec: a policy allowing it (nfguard suggest):\n"
                  + report.suggestion(records, resolvers),
                  file=sys.stderr, end="")
        elif not self.args.quiet:
            print(report.summary(records), file=sys.stderr, end="")


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while sock.recv(64):
            pass

