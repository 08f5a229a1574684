"""A reload (SIGHUP, `nfguard reload`): build in a thread, swap between two packets.

The new config and policy are built in a worker thread while the loop keeps answering
packets, then the engine is swapped in one assignment between two packets: no queued
packet waits for a policy to compile, and none is decided by half of one. A config or
policy with any error is rejected whole (file and line in the log and in the reply); the
running policy stays. Flows already decided keep their verdict (it lives in the kernel's
ct mark); flows waiting for a name keep their state.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from nfguard.audit import AuditLog
from nfguard.config import Config, load_config
from nfguard.control import Reply
from nfguard.engine import Engine
from nfguard.policy.build import build_engine
from nfguard.policy.load import PolicyError
from nfguard.sdnotify import Notifier
from nfguard.wiring import Services

log = logging.getLogger(__name__)

# Config keys a reload cannot apply: the ruleset, the queue binding and the listeners.
RESTART_KEYS = (("engine", "queue"), ("engine", "fail"), ("engine", "filter_loopback"),
                ("engine", "forward_from"), ("engine", "queue_maxlen"), ("engine", "workers"),
                ("engine", "new_flows_per_user"),
                ("metrics", "listen"), ("metrics", "tls_cert"), ("metrics", "tls_key"),
                ("control", "socket"), ("containers", "docker_root"),
                ("containers", "podman_root"), ("containers", "containerd_state"),
                ("containers", "crio_runroot"))


@dataclass
class _Build:
    """One build of config + engine in a worker thread, and who waits for its outcome."""

    waiters: list[Reply]
    result: tuple[Config, Engine] | Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Reloader:
    """Runs at most one build at a time; requests during a build get the next one (the
    files may have changed since the running build read them). The loop calls `tend`
    each turn; `wake` (set by the loop) makes its select return when a build is done."""

    def __init__(self, services: Services, notifier: Notifier) -> None:
        self.services = services
        self.notifier = notifier
        self.wake: socket.socket | None = None
        self.last_rejection: tuple[float, str] | None = None
        self._build: _Build | None = None  # the build running now
        self._waiters: list[Reply] = []  # for the build after it
        self._again = False

    def request(self, reply: Reply | None) -> None:
        """Start a build now, or after the running one; `reply` gets the outcome of the
        build that includes this request."""
        if reply is not None:
            self._waiters.append(reply)
        if self._build is not None:
            self._again = True
            return
        self._start()

    def on_request(self, _request: dict[str, Any], reply: Reply) -> None:
        """The control socket's "reload": answered once the build is applied or rejected."""
        self.request(reply)

    def tend(self) -> None:
        """Apply a finished build (from the loop, between two packets)."""
        if self._build is not None and self._build.done.is_set():
            self._finish()

    def abandon(self, answer: dict[str, Any]) -> None:
        """Everyone waiting on a reload that will not be applied now."""
        waiters = self._waiters + (self._build.waiters if self._build else [])
        self._waiters = []
        for reply in waiters:
            reply.send(answer)

    def _start(self) -> None:
        job = _Build(self._waiters)
        self._waiters = []
        self._again = False
        self._build = job
        self.notifier.reloading()
        threading.Thread(target=self._run_build, args=(job, self.wake), name="nfguard-reload",
                         daemon=True).start()

    def _run_build(self, job: _Build, wake: socket.socket | None) -> None:
        """In the reload thread: read and compile; never touches the running state."""
        try:
            config = load_config(self.services.config_path)
            job.result = (config, build_engine(config, self.services.pipeline.trusted))
        except Exception as exc:
            job.result = exc
        job.done.set()
        if wake is not None:
            # The loop's select returns; if the socket is full or closed, the loop sees
            # `done` on its next turn anyway.
            with contextlib.suppress(OSError):
                wake.send(b"r")

    def _finish(self) -> None:
        job = self._build
        assert job is not None and job.result is not None
        self._build = None
        outcome = self.apply(job.result)
        self.notifier.ready(self.services.summary())
        for reply in job.waiters:
            reply.send(outcome)
        if self._again or self._waiters:
            self._start()

    def apply(self, result: tuple[Config, Engine] | Exception) -> dict[str, Any]:
        """Swap in the new config and engine whole, or keep the running ones."""
        services = self.services
        pipeline = services.pipeline
        stats = pipeline.stats
        if isinstance(result, Exception):
            services.audit.reopen()  # log rotation works whatever state the policy is in
            stats.reload_failures += 1
            if isinstance(result, PolicyError):
                message = str(result)
                log.error("reload rejected, the running policy stays:\n%s", message)
            else:
                message = f"{type(result).__name__}: {result}"
                log.error("reload failed, the running policy stays: %s", message,
                          exc_info=result)
            self.last_rejection = (time.time(), message)
            return {"ok": False, "error": message}
        config, engine = result
        running = services.config
        warnings = [
            f"{section}.{key} changed; restart nfguard to apply it"
            for section, key in RESTART_KEYS
            if getattr(getattr(config, section), key) != getattr(getattr(running, section), key)
        ]
        for warning in warnings:
            log.warning("reload: %s", warning)
        pipeline.engine = engine
        pipeline.configure(config.names)
        guard = services.guard
        if guard is not None:
            # The running [engine] settings: those the ruleset is made of take a restart
            # (workers, queue, ...); only whether DNS queries are judged changes here.
            ruleset = services.ruleset(replace(config, engine=running.engine), engine)
            if ruleset != guard.ruleset:  # DNS queries judged now, or no longer
                guard.ruleset = ruleset
                guard.install()
        if (config.audit.path, config.audit.format) != (running.audit.path,
                                                        running.audit.format):
            old = services.audit
            pipeline.audit = AuditLog(config.audit.path, config.audit.format)
            old.close()
        else:
            services.audit.reopen()  # log rotation: continue in a new file at the same path
        services.config = config
        stats.reloads += 1
        if services.team is not None:
            services.team.signal(signal.SIGHUP)  # each worker reloads the same files itself
        stats.policy_loaded_at = time.time()
        stats.policy_rules = engine.policies.source.rule_count
        log.info("reloaded: %d rules", stats.policy_rules)
        return {"ok": True, "rules": stats.policy_rules, "warnings": warnings}
