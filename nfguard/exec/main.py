"""`nfguard exec`: the order of things, and the way out whatever happens.

With the service running (and taking exec requests), the service judges the command as a
transient client (nfguard.exec.service). Otherwise, as root, a private engine does:
slot, cgroup, watchdog, ruleset, queue, then the command. Either way the loop waits for
the command, passes signals on, reloads the policy when its file changes; when the
command exits, the processes it left in its cgroup are killed, everything installed is
removed, and the summary printed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

from nfguard.config import Config, load_config
from nfguard.exec import report, service
from nfguard.exec.cgroup import Cgroup, CgroupError
from nfguard.exec.command import (
    FORWARDED,
    NOT_FOUND,
    TERMINAL,
    StartError,
    caller,
    spawn,
    terminal_signal_direct,
)
from nfguard.exec.policy import Documents, compose, read_documents
from nfguard.exec.watch import PolicyWatcher
from nfguard.policy.load import PolicyError
from nfguard.policy.model import PolicySet
from nfguard.suggest.events import Resolvers

FAILURE = 125  # nfguard exec itself failed (as env, timeout and chroot say it)
TICK = 0.25  # seconds between the loop's chores
PR_SET_PDEATHSIG = 1  # prctl: the signal a process gets when its parent dies
Handlers = list[tuple[int, Callable[[], None]]]  # (fd, what to call when it is readable)


def run(args: argparse.Namespace) -> int:
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        print("nfguard exec: no command given (nfguard exec [options] -- COMMAND)",
              file=sys.stderr)
        return 2
    has_config = os.path.exists(args.config)
    config = load_config(args.config) if has_config else Config()
    try:
        documents = read_documents(args.policy) if args.policy else []
        policies = compose(documents, args.allow, args.allow_all)
    except PolicyError as exc:
        print(f"nfguard exec: the policy has errors, nothing was run:\n{exc}", file=sys.stderr)
        return FAILURE
    if service.available(config):
        return Served(args, argv, documents).run(config)
    if os.geteuid() != 0:
        print("nfguard exec: needs root (sudo nfguard exec ...) to run the command under "
              "its own policy, or the nfguard service running with its control socket "
              f"({config.control.socket or 'control.socket is off'}) open to you "
              "([control] group)", file=sys.stderr)
        return FAILURE
    return Standalone(args, argv, documents).run(config, policies,
                                                 config.audit.path if has_config
                                                 else os.devnull)


class Run:
    """What both paths share: the command, its signals, the policy file's reloads."""

    def __init__(self, args: argparse.Namespace, argv: list[str], documents: Documents) -> None:
        self.args, self.argv, self.documents = args, argv, documents
        self.mode = "audit" if args.audit else "allow_all" if args.allow_all else "enforce"

    def serve(self, cgroup: Cgroup, handlers: Handlers, tend: Callable[[], None],
              apply: Callable[[Documents], None]) -> int:
        """Run the command in `cgroup` until it exits; its status."""
        wake_r, wake_w = socket.socketpair()
        for end in (wake_r, wake_w):
            end.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        pending: list[int] = []

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            pending.append(signum)

        direct = terminal_signal_direct()
        saved = {sig: signal.signal(sig, on_signal) for sig in FORWARDED}
        saved.update({sig: signal.signal(sig, signal.SIG_IGN if direct else on_signal)
                      for sig in TERMINAL})
        watcher = PolicyWatcher(self.args.policy, time.monotonic()) if self.args.policy else None
        selector = selectors.DefaultSelector()
        try:
            child = spawn(self.argv, cgroup, caller(dict(os.environ), self.args.as_root))
            for fd, callback in handlers:
                selector.register(fd, selectors.EVENT_READ, callback)
            selector.register(child.pidfd, selectors.EVENT_READ, child.poll)
            selector.register(wake_r, selectors.EVENT_READ, lambda: _drain(wake_r))
            while child.poll() is None:
                for key, _ in selector.select(TICK):
                    key.data()
                    if child.status is not None:
                        break
                while pending:
                    child.signal(pending.pop(0))
                tend()
                if watcher is not None and watcher.due(time.monotonic()):
                    watcher.reloaded()
                    self._reload(apply)
            assert child.status is not None
            return child.status
        finally:
            selector.close()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def _reload(self, apply: Callable[[Documents], None]) -> None:
        """The edited policy file: applied, or refused with file:line (the old one stays)."""
        try:
            documents = read_documents(self.args.policy)
            compose(documents, self.args.allow, self.args.allow_all)  # file:line, here
            apply(documents)
        except (PolicyError, service.PolicyRefused) as exc:
            print(f"nfguard exec: {self.args.policy} changed but has errors; the previous "
                  f"policy stays:\n{exc}", file=sys.stderr)
            return
        print(f"nfguard exec: {self.args.policy} reloaded", file=sys.stderr)

    def report(self, records: list[report.FlowRecord], resolvers: Resolvers | None) -> None:
        if self.args.audit:
            print("nfguard exec: the command reached:\n"
                  + (report.reached(records) or "  (nothing)\n")
                  + "nfguard exec: a policy allowing it (nfguard suggest):\n"
                  + report.suggestion(records, resolvers), file=sys.stderr, end="")
        elif not self.args.quiet:
            print(report.summary(records), file=sys.stderr, end="")

    @property
    def label(self) -> str:
        return f"{self.argv[0]} (nfguard exec pid {os.getpid()})"


class Standalone(Run):
    def run(self, config: Config, policies: PolicySet, audit_path: str) -> int:
        from nfguard.exec.engine import PrivateEngine, Slot, engine_settings
        from nfguard.exec.ruleset import install, render_scoped, uninstall
        from nfguard.exec.watchdog import Watchdog
        from nfguard.nft.installer import Installer

        settings = engine_settings(config, "audit" if self.args.audit else "enforce")
        slot = Slot()
        try:
            cgroup = checked(Cgroup.create(f"{slot.number}-{os.getpid()}-"
                                           f"{secrets.token_hex(3)}"))
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
            engine = PrivateEngine(config, policies, settings, scope.queue, audit_path)
            running = engine

            def apply(documents: Documents) -> None:
                running.swap(compose(documents, self.args.allow, self.args.allow_all))

            status = self.serve(cgroup, [(engine.fileno(), engine.on_packets)], engine.tend,
                                apply)
        except StartError as exc:
            print(f"nfguard exec: {exc.strerror}", file=sys.stderr)
            status = NOT_FOUND
        finally:
            records = engine.close() if engine is not None else []
            cleanup()
            watchdog.release()
            slot.close()
        self.report(records, engine.resolvers.serves if engine is not None else None)
        return status


class Served(Run):
    """The service judges the command. A holder process of ours sits in the cgroup until
    the records are fetched: the service drops a client whose cgroup empties, and the
    command's last process may exit before we ask."""

    def run(self, config: Config) -> int:
        name = f"{os.getpid()}-{secrets.token_hex(3)}"
        try:
            cgroup = checked(Cgroup.create(name) if os.geteuid() == 0
                             else Cgroup.create_delegated(name))
        except CgroupError as exc:
            print(f"nfguard exec: {exc}", file=sys.stderr)
            return FAILURE
        holder = _hold(cgroup)
        session = service.Session(config.control.socket, "/" + cgroup.path, self.mode,
                                  self.label)
        records: list[report.FlowRecord] = []
        try:
            session.begin(self.documents, self.args.allow)
            status = self.serve(cgroup, [], lambda: None,
                                lambda documents: session.policy(documents, self.args.allow))
        except service.PolicyRefused as exc:
            print(f"nfguard exec: the policy has errors, nothing was run:\n{exc}",
                  file=sys.stderr)
            status = FAILURE
        except service.ServiceError as exc:
            print(f"nfguard exec: the service refused: {exc}", file=sys.stderr)
            status = FAILURE
        except StartError as exc:
            print(f"nfguard exec: {exc.strerror}", file=sys.stderr)
            status = NOT_FOUND
        finally:
            if session.client is not None:
                try:
                    records = session.end()
                except service.ServiceError as exc:
                    print(f"nfguard exec: no record from the service: {exc}", file=sys.stderr)
            cgroup.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(holder, 0)
            with contextlib.suppress(OSError):
                cgroup.remove()
        self.report(records, None)
        return status


def checked(cgroup: Cgroup) -> Cgroup:
    """The cgroup, if the kernel records it on its processes' sockets (else nothing could
    tell the command's flows from others': they would pass unjudged); removed if not."""
    try:
        if cgroup.tags_sockets():
            return cgroup
        problem = ("this kernel does not record cgroup v2 on sockets (a cgroup v1 net_cls "
                   "or net_prio controller was configured): the command's flows cannot be "
                   "told apart; nothing was run")
    except (CgroupError, OSError) as exc:
        problem = f"cannot check the command's cgroup: {exc}"
    with contextlib.suppress(OSError):
        cgroup.remove()
    raise CgroupError(problem)


def _hold(cgroup: Cgroup) -> int:
    """A process of ours that waits in the cgroup: killed with it, or when exec dies (then
    the command alone keeps its client at the service alive, as it should)."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # exec died before that was set
                os._exit(0)
            for signum in (*TERMINAL, *FORWARDED):
                signal.signal(signum, signal.SIG_IGN)
            cgroup.join()
            while True:
                signal.pause()
        finally:
            os._exit(0)
    deadline = time.monotonic() + 5
    while pid not in cgroup.pids() and time.monotonic() < deadline:
        time.sleep(0.005)
    return pid


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while sock.recv(64):
            pass
