"""The control socket's requests, by command name, and the `status` answer.

A registry rather than a chain of ifs in the daemon: a feature that needs a request of its
own adds it (`handlers.add("exec_begin", fn)`) where it is wired, and the loop, which
serves whatever is registered, does not change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from nfguard import __version__
from nfguard.config import Config
from nfguard.control import Handler, Reply
from nfguard.nft import PATH_DESCRIPTIONS
from nfguard.wiring import Services


class Handlers:
    """Command name -> handler, called as the ControlServer's one handler.

    A handler gets the request (a dict with "command") and a Reply; it returns the answer
    (a dict with "ok") or None and sends it later through the Reply (as a reload does).
    An exception in a handler is answered as an internal error by the server."""

    def __init__(self) -> None:
        self._by_command: dict[str, Handler] = {}

    def add(self, command: str, handler: Handler) -> None:
        """Serve `command` with `handler`; two handlers for one command are a bug."""
        if command in self._by_command:
            raise ValueError(f"control command {command!r} already has a handler")
        self._by_command[command] = handler

    @property
    def commands(self) -> list[str]:
        return list(self._by_command)

    def __call__(self, request: dict[str, Any], reply: Reply) -> dict[str, Any] | None:
        command = request["command"]
        handler = self._by_command.get(command)
        if handler is None:
            return {"ok": False,
                    "error": f"unknown command {command!r} ({', '.join(self._by_command)})"}
        return handler(request, reply)


def status_handler(status: Callable[[], dict[str, Any]]) -> Handler:
    """The "status" request: answered at once with `status()`."""
    def on_status(_request: dict[str, Any], _reply: Reply) -> dict[str, Any]:
        return {"ok": True, "status": status()}
    return on_status


def status_report(services: Services, *, started_at: float,
                  last_rejection: tuple[float, str] | None,
                  errors: Sequence[tuple[float, str]]) -> dict[str, Any]:
    """What `nfguard status` shows: plain data, rendered by nfguard.status."""
    config, pipeline, src = services.config, services.pipeline, services.sources
    stats = src.total_stats()
    policies = pipeline.engine.policies
    by_action: dict[str, int] = {}
    for (action, *_), count in dict(stats.decisions).items():
        by_action[action] = by_action.get(action, 0) + count
    kernels = src.kernel_queues()
    latency = src.total_latency()
    names = pipeline.names
    team = services.team
    return {
        "pid": os.getpid(),
        "version": __version__,
        "started_at": started_at,
        "now": time.time(),
        "config": services.config_path,
        "mode": config.engine.mode,
        "default": config.engine.default,
        "fail": config.engine.fail,
        "queue": config.engine.queue,
        "queue_path": PATH_DESCRIPTIONS[services.queue_path],
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
                    "last_rejection": last_rejection},
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
        "ruleset": None if services.guard is None else services.guard.status(),
        "latency": {"p50": latency.quantile(0.5), "p99": latency.quantile(0.99)},
        "kernel_queue": None if not kernels else {
            "length": sum(k.length for k in kernels),
            "dropped": sum(k.dropped for k in kernels),
            "user_dropped": sum(k.user_dropped for k in kernels)},
        "workers": None if team is None else {
            "count": team.count, "alive": 1 + team.alive(), "restarts": team.restarts()},
        "names": {"entries": len(names), "hits": names.hits, "misses": names.misses,
                  "evictions": names.evictions, "resolvers": pipeline.trusted.describe(),
                  "untrusted_answers": stats.dns_untrusted,
                  "queries": config.names.queries, "queries_judged": stats.dns_queries,
                  "queries_refused": stats.dns_queries_refused},
        "attribution": src.total_attribution(),
        "audit": {"path": config.audit.path, "written": services.audit.written},
        "metrics": _metrics_url(config),
        "errors": list(errors),
    }


def _metrics_url(config: Config) -> str | None:
    if not config.metrics.listen:
        return None
    scheme = "https" if config.metrics.tls_cert else "http"
    return f"{scheme}://{config.metrics.listen}/metrics"
