"""`nfguard status` text: every part of the daemon's answer shown, nothing invented."""

from __future__ import annotations

import time
from typing import Any

from nfguard.status import render_status


def answer(**changes: Any) -> dict[str, Any]:
    now = time.time()
    status = {
        "pid": 4242, "version": "0.1.0", "started_at": now - 3 * 3600 - 120, "now": now,
        "config": "/etc/nfguard/nfguard.toml", "mode": "enforce", "default": "deny",
        "fail": "closed", "queue": 0, "queue_path": "nft queue expression",
        "forward_from": ["docker0", "br-*"],
        "policy": {"dir": "/etc/nfguard/rules", "files": 1, "clients": 2, "policies": 1,
                   "rules": 12, "loaded_at": now - 65},
        "reloads": {"ok": 3, "failed": 0, "last_rejection": None},
        "decisions": {"allow": 90, "deny": 10},
        "counters": {"packets": 130, "unparseable": 1, "pending_flows": 4,
                     "hello_timeouts": 0, "dns_answers": 20, "engine_errors": 0,
                     "queue_errors": 0},
        "pending_now": 2,
        "ruleset": {"restores": 0, "last_at": None, "last_missing": [], "last_by": None,
                    "last_took": None, "last_cut": 0},
        "latency": {"p50": 50e-6, "p99": 0.0025},
        "kernel_queue": {"length": 0, "dropped": 17, "user_dropped": 3},
        "names": {"entries": 40, "hits": 80, "misses": 5, "evictions": 0,
                  "resolvers": "10.0.0.53 (/etc/resolv.conf)", "untrusted_answers": 2},
        "attribution": None,
        "audit": {"path": "/var/log/nfguard/audit.jsonl", "written": 100},
        "metrics": "http://127.0.0.1:9808/metrics",
        "errors": [],
    }
    status.update(changes)
    return status


def test_summary_lines() -> None:
    text = render_status(answer())
    assert text.startswith("nfguard 0.1.0 running, pid 4242, since ")
    assert "(up 3h 2m)" in text
    assert "engine:       mode enforce, default deny, fail closed\n" in text
    assert "queue:        0 via nft queue expression\n" in text
    assert "forwarded:    judged from docker0, br-*\n" in text
    assert "forwarded:    left alone (engine.forward_from is empty)\n" in render_status(
        answer(forward_from=[]))
    assert "policy:       12 rules in 1 file under /etc/nfguard/rules (2 clients, 1 policy)" in text
    assert "(1m 5s ago)" in text
    assert "reloads:      3 applied, 0 rejected\n" in text
    assert "flows:        100 decided (90 allow, 10 deny), 2 waiting for a name now\n" in text
    assert "latency:      half under 50 µs, 99% under 2.5 ms" in text
    assert "kernel queue: 0 waiting, 17 dropped (queue full), 3 dropped (socket buffer full)" \
        in text
    assert "name cache:   40 entries, 80 hits, 5 misses, 0 evictions\n" in text
    assert ("DNS answers:  taught by 10.0.0.53 (/etc/resolv.conf); 2 from other servers, "
            "not learnt\n") in text
    assert "audit:        /var/log/nfguard/audit.jsonl (100 events written)\n" in text
    assert "metrics:      http://127.0.0.1:9808/metrics\n" in text
    assert "errors:       0 (0 in the engine, 0 giving verdicts)\n" in text
    assert "attribution" not in text and "last errors" not in text


def test_rejection_errors_and_optional_parts() -> None:
    now = time.time()
    text = render_status(answer(
        reloads={"ok": 0, "failed": 1, "last_rejection": [now, "a.toml:3: bad\nb.toml:9: worse"]},
        counters={**answer()["counters"], "engine_errors": 2, "queue_errors": 1},
        errors=[[now, "reload rejected, the running policy stays:\na.toml:3: bad"]],
        decisions={}, latency={"p50": None, "p99": None}, kernel_queue=None, metrics=None,
        attribution={"lookups": 7, "recorded": 2, "hits": 4, "failures": 1, "errors": 0,
                     "inode_cache": 3, "proc_cache": 2, "events": 9},
    ))
    assert "0 applied, 1 rejected\n  last rejected " in text
    assert "\n    a.toml:3: bad\n    b.toml:9: worse\n" in text
    assert "errors:       3 (2 in the engine, 1 giving verdicts)\n  last errors:\n" in text
    assert "reload rejected, the running policy stays:\n      a.toml:3: bad\n" in text
    assert "0 decided (none yet)" in text
    assert "latency:" not in text
    assert "kernel queue: not found" in text
    assert "metrics:      off" in text
    assert ("attribution:  7 lookups, 2 recorded by the kernel, 4 cache hits, 1 without a "
            "process, 0 errors; caches: 3 sockets, 2 processes\n") in text


def test_latency_past_the_last_bucket() -> None:
    text = render_status(answer(latency={"p50": 0.5, "p99": float("inf")}))
    assert "half under 500 ms, 99% under more than 1 s" in text


def test_ruleset_watch() -> None:
    assert "ruleset:      watched; never changed by another program\n" in render_status(answer())
    text = render_status(answer(ruleset={
        "restores": 2, "last_at": time.time() - 5, "last_by": "nft (pid 77)",
        "last_missing": ["table inet nfguard deleted", "table ip security deleted"],
        "last_took": 0.0123, "last_cut": 1}))
    assert "ruleset:      watched; restored 2 times, last " in text
    assert " in 12.3 ms (1 flow made meanwhile cut), after nft (pid 77):\n" \
        "  table inet nfguard deleted\n  table ip security deleted\n" in text
    assert "ruleset:" not in render_status(answer(ruleset=None)), "a worker has no watch"


def test_kernel_drops_stand_out() -> None:
    text = render_status(answer())
    assert "3 dropped (socket buffer full)  <-- packets dropped by the kernel" in text
    coloured = render_status(answer(), colour=True)
    assert "\x1b[1;31mkernel queue: 0 waiting, 17 dropped" in coloured
    quiet = answer(kernel_queue={"length": 2, "dropped": 0, "user_dropped": 0})
    assert "<--" not in render_status(quiet) and "\x1b" not in render_status(quiet, True)


def test_recent_and_frequent_denies() -> None:
    from nfguard.denies import Denies

    denies = Denies()
    for second in range(8):
        denies.add({"@timestamp": f"2026-12-07T21:00:0{second}.000Z",
                    "event": {"action": "deny", "reason": "no_rule_match"},
                    "nfguard": {"client": "web", "verdict": "deny"},
                    "destination": {"ip": "198.18.0.9", "port": 443,
                                    "domain": "evil.test" if second % 4 else "x\x1b[2J.test"},
                    "network": {"transport": "tcp"},
                    "process": {"executable": "/usr/bin/curl"}})
    text = render_status(answer(denies=denies.snapshot()))
    assert ("denies:       8 since start; most recent first:\n"
            "  2026-12-07T21:00:07.000Z  /usr/bin/curl -> evil.test:443/tcp  web/-  "
            "no_rule_match\n") in text
    assert "x\\x1b[2J.test" in text, "no terminal control from a name"
    assert ("  most frequent:\n"
            "        6x  /usr/bin/curl -> evil.test:443/tcp  client web\n"
            "        2x  /usr/bin/curl -> x\\x1b[2J.test:443/tcp  client web\n") in text
    assert "denies:       none since start" in render_status(answer(denies=Denies().snapshot()))
    assert "denies:" not in render_status(answer()), "an older daemon's answer"


def test_private_names_line() -> None:
    """[names] private, what DNS bound to internal addresses, and the host's networks."""
    assert "private:" not in render_status(answer())  # an older daemon's answer
    text = render_status(answer(private={
        "setting": "allow", "bindings": {"private": 3, "metadata": 1},
        "last": "api.example.com -> 169.254.169.254 (metadata)",
        "networks": "192.0.2.0/24, fd00::/64"}))
    assert ('private:      [names] private = "allow": names lead inside, never to loopback, '
            "link-local or metadata addresses (but by a rule with private = true or a CIDR)\n"
            ) in text
    assert ("  DNS bound names to internal addresses 4 times (metadata 1, private 3); last "
            "api.example.com -> 169.254.169.254 (metadata)\n") in text
    assert "  this host's networks: 192.0.2.0/24, fd00::/64\n" in text
    quiet = render_status(answer(private={"setting": "deny", "bindings": {}, "last": "",
                                          "networks": "none"}))
    assert '[names] private = "deny": names lead nowhere inside' in quiet
    assert "  DNS bound no name to an internal address\n" in quiet


def test_exec_commands() -> None:
    assert "exec:         no command under a policy of its own\n" in render_status(answer())
    status = answer(exec=[
        {"id": "exec-3", "label": "make[4242]", "cgroup": "/nfguard.slice/exec-4242.scope",
         "mode": "enforce", "owner": 1000, "stacked": True, "policy": "egress.toml",
         "since": 0.0, "allowed": 12, "denied": 2}])
    status["exec"][0]["since"] = status["now"] - 65
    text = render_status(status)
    assert ("exec:         1 command under a policy of its own:\n"
            "  exec-3 make[4242]: cgroup /nfguard.slice/exec-4242.scope, enforce, on top of "
            "the host's policy, policy egress.toml, uid 1000, 1m 5s; flows 12 allowed, "
            "2 denied\n") in text
