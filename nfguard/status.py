"""`nfguard status`: the running daemon's summary (control_handlers.status_report) as
text for a person."""

from __future__ import annotations

import time
from typing import Any


def render_status(status: dict[str, Any]) -> str:
    s = status
    now = s["now"]
    policy, reloads, counters = s["policy"], s["reloads"], s["counters"]
    lines = [
        f"nfguard {s['version']} running, pid {s['pid']}, since {_when(s['started_at'])} "
        f"(up {_duration(now - s['started_at'])})",
        f"config:       {s['config']}",
        f"engine:       mode {s['mode']}, default {s['default']}, fail {s['fail']}",
        f"queue:        {s['queue']} via {s['queue_path']}",
        "forwarded:    " + (f"judged from {', '.join(s['forward_from'])}" if s["forward_from"]
                            else "left alone (engine.forward_from is empty)"),
        f"policy:       {_count(policy['rules'], 'rule')} in {_count(policy['files'], 'file')} "
        f"under "
        f"{policy['dir']} ({_count(policy['clients'], 'client')}, "
        f"{_count(policy['policies'], 'policy', 'policies')}), "
        f"loaded {_when(policy['loaded_at'])} ({_duration(now - policy['loaded_at'])} ago)",
        f"reloads:      {reloads['ok']} applied, {reloads['failed']} rejected",
    ]
    if reloads["last_rejection"]:
        at, message = reloads["last_rejection"]
        lines.append(f"  last rejected {_when(at)}:")
        lines += [f"    {line}" for line in message.splitlines()]
    if s.get("ruleset") is not None:
        lines += _ruleset(s["ruleset"])
    decisions = s["decisions"]
    decided = ", ".join(f"{count} {action}" for action, count in sorted(decisions.items()))
    lines += [
        f"flows:        {sum(decisions.values())} decided ({decided or 'none yet'}), "
        f"{s['pending_now']} waiting for a name now",
        f"packets:      {counters['packets']} received, {counters['unparseable']} unparseable, "
        f"{counters['dns_answers']} DNS answers learnt",
    ]
    latency = s["latency"]
    if latency["p50"] is not None:
        lines.append(f"latency:      half under {_seconds(latency['p50'])}, "
                     f"99% under {_seconds(latency['p99'])} (per queued packet)")
    kernel = s["kernel_queue"]
    if kernel is None:
        lines.append("kernel queue: not found in /proc/net/netfilter/nfnetlink_queue")
    else:
        lines.append(f"kernel queue: {kernel['length']} waiting, {kernel['dropped']} dropped "
                     f"(queue full), {kernel['user_dropped']} dropped (socket buffer full)")
    names = s["names"]
    lines.append(f"name cache:   {names['entries']} entries, {names['hits']} hits, "
                 f"{names['misses']} misses, {names['evictions']} evictions")
    lines.append(f"DNS answers:  taught by {names['resolvers']}; "
                 f"{names['untrusted_answers']} from other servers, not learnt")
    if s["attribution"] is not None:
        a = s["attribution"]
        lines.append(f"attribution:  {a.get('lookups', 0)} lookups, {a.get('recorded', 0)} "
                     f"recorded by the kernel, {a.get('hits', 0)} cache "
                     f"hits, {a.get('failures', 0)} without a process, {a.get('errors', 0)} "
                     f"errors; caches: {a.get('inode_cache', 0)} sockets, "
                     f"{a.get('proc_cache', 0)} processes")
    lines.append(f"audit:        {s['audit']['path']} ({s['audit']['written']} events written)")
    lines.append(f"metrics:      {s['metrics'] or 'off'}")
    errors = counters["engine_errors"] + counters["queue_errors"]
    lines.append(f"errors:       {errors} ({counters['engine_errors']} in the engine, "
                 f"{counters['queue_errors']} giving verdicts)")
    if s["errors"]:
        lines.append("  last errors:")
        for at, message in s["errors"]:
            first, *more = message.splitlines() or [""]
            lines.append(f"    {_when(at)} {first}")
            lines += [f"      {line}" for line in more]
    return "\n".join(lines) + "\n"


def _ruleset(guard: dict[str, Any]) -> list[str]:
    """The watch over the ruleset (nfguard.ruleset_watch): how often it was put back."""
    if not guard["restores"]:
        return ["ruleset:      watched; never changed by another program"]
    return [f"ruleset:      watched; restored {_count(guard['restores'], 'time')}, last "
            f"{_when(guard['last_at'])} in {_seconds(guard['last_took'])} "
            f"({_count(guard.get('last_cut', 0), 'flow')} made meanwhile cut), after "
            f"{guard['last_by']}:",
            *(f"  {change}" for change in guard["last_missing"])]


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _seconds(value: float) -> str:
    if value == float("inf"):
        return "more than 1 s"
    if value < 1e-3:
        return f"{value * 1e6:g} µs"
    if value < 1:
        return f"{value * 1e3:g} ms"
    return f"{value:g} s"
