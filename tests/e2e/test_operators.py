"""Watching it work, as an operator does: `nfguard log -f` shows a deny within a second
(across a rotation: logrotate's rename, then SIGUSR1 reopens the audit file without a
reload), `nfguard names` says which DNS answer taught a name, `nfguard status` lists the
denies."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from datetime import datetime

from tests.e2e.lab import ALLOWED_V4, CLIENT_V4, OTHER_V4, SERVER_V4, SLOWDOWN, Lab
from tests.e2e.policies import names_policy

SHOWN_WITHIN = 1.0  # seconds from a deny to its line on `nfguard log -f`


class LineReader:
    """Lines of a child's stdout, each with the moment it was read."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def until(self, marker: str, timeout: float) -> tuple[str, float]:
        end = time.monotonic() + timeout * SLOWDOWN
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if marker in line.decode():
                    return line.decode(), time.time()
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no line with {marker!r} within {timeout} s")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"the follower ended before a line with {marker!r}")
            self.buffer += chunk


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["@timestamp"].replace("Z", "+00:00")).timestamp()


def deny_to(lab: Lab, port: int) -> dict:
    """A connection the policy denies; its audit event."""
    assert lab.curl(OTHER_V4, port, timeout=2)[0] != 0
    return lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == port)


def test_log_follows_denies_across_rotation_and_status_counts_them(lab: Lab) -> None:
    config = lab.write_config(names_policy(80))
    engine = lab.start_engine(config)
    deny_to(lab, 7001)  # history: the follower shows it first, so it is reading
    follower = lab.spawn(lab.client, sys.executable, "-m", "nfguard", "log", "-f", "--deny",
                         "--config", str(config), stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    lines = LineReader(follower)
    try:
        assert " DENY " in lines.until(":7001", 10)[0]
        delays = []
        for port in range(7002, 7007):
            if port == 7005:  # logrotate: rename, then postrotate's signal
                lab.audit_path.rename(lab.audit_path.with_name("audit.jsonl.1"))
                engine.send_signal(signal.SIGUSR1)
            lab.curl(OTHER_V4, port, timeout=2)
            line, seen = lines.until(f":{port}", 5)
            event = lab.wait_for_event(lambda e, p=port: e.get("destination", {}).get("port")
                                       == p)
            assert "  DENY   everyone/deny-rest/everything  " in line
            delays.append(seen - stamp(event))
        print(f"nfguard log -f: deny to line {min(delays) * 1e3:.0f}-{max(delays) * 1e3:.0f} "
              f"ms over {len(delays)} denies")
        assert max(delays) < SHOWN_WITHIN * SLOWDOWN, delays
    finally:
        follower.terminate()
        follower.wait(5)
    rotated = [json.loads(line) for line in
               lab.audit_path.with_name("audit.jsonl.1").read_text().splitlines()]
    assert [e["destination"]["port"] for e in rotated if e["event"]["action"] == "deny"] == [
        7001, 7002, 7003, 7004], "before the rotation: the renamed file"
    assert [e["destination"]["port"] for e in lab.audit_events()
            if e["event"]["action"] == "deny"] == [7005, 7006], "after SIGUSR1: the new file"
    status = lab.nfguard("status", "--config", str(config)).stdout
    assert "reloads:      0 applied, 0 rejected" in status, "SIGUSR1 reloads no policy"
    assert "denies:       6 since start; most recent first:\n" in status
    assert f" -> {OTHER_V4}:7006/tcp  everyone/deny-rest/everything  " in status
    assert "  most frequent:\n" in status
    assert lab.stop_engine() == 0


def test_names_says_which_answer_taught_a_name(named: Lab) -> None:
    lab = named
    lab.serve_dns(f"--host-record=allowed.test,{ALLOWED_V4}", "--cname=alias.test,allowed.test")
    config = lab.write_config(names_policy(80, queries="any"))
    lab.start_engine(config)
    assert lab.dig("alias.test") == ["allowed.test.", ALLOWED_V4]
    text = lab.nfguard("names", ALLOWED_V4, "--config", str(config)).stdout
    assert f"{ALLOWED_V4}  alias.test  expires in " in text
    assert f"{ALLOWED_V4}  allowed.test  expires in " in text
    assert f" from {SERVER_V4} (udp) answering {CLIENT_V4}:" in text
    assert "  same answer, same address: allowed.test\n" in text
    found = json.loads(lab.nfguard("names", "allowed.test", "--json", "--config",
                                   str(config)).stdout)
    (pair,) = found["pairs"]
    assert pair["ip"] == ALLOWED_V4 and pair["chain"] == ["alias.test"]
    assert pair["origin"]["resolver"] == SERVER_V4
    assert pair["origin"]["question"] == "alias.test"
    assert pair["expires_at"] > time.time() + pair["ttl"]  # plus the grace
    assert "no names for other.test" in lab.nfguard("names", "other.test", "--config",
                                                    str(config)).stdout
    assert lab.stop_engine() == 0


def test_journald_sees_priorities(lab: Lab) -> None:
    """stderr is the journal when JOURNAL_STREAM names it (as systemd sets it): each line,
    continuation lines too, starts with its priority."""
    config = lab.write_config(names_policy(80))
    lab.engine_log.touch()
    status = lab.engine_log.stat()
    lab.start_engine(config, env={"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"})
    (lab.workdir / "rules" / "policy.toml").write_text("[[policy]]\nname = 5\n")
    assert lab.nfguard("reload", "--config", str(config), check=False).returncode == 1
    lab.wait_until(lambda: "reload rejected" in lab.engine_log.read_text())
    log = lab.engine_log.read_text().splitlines()
    assert "<6>INFO engine bound to queue 0" in log
    rejected = log.index("<3>ERROR reload rejected, the running policy stays:")
    assert log[rejected + 1].startswith("<3>") and "policy.toml:2" in log[rejected + 1]
    assert all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in log), log
    assert lab.stop_engine() == 0


def test_two_workers_reopen_on_sigusr1_and_status_adds_up_their_denies(lab: Lab) -> None:
    """The main process passes SIGUSR1 on: every worker continues in the new file."""
    config = lab.write_config(names_policy(80), workers=2)
    engine = lab.start_engine(config)
    ports = range(7101, 7109)  # spread over both workers by port
    for port in ports[:4]:
        deny_to(lab, port)
    lab.audit_path.rename(lab.audit_path.with_name("audit.jsonl.1"))
    engine.send_signal(signal.SIGUSR1)
    lab.wait_until(lambda: lab.engine_log.read_text().count("reopened") == 2)  # main, worker
    for port in ports[4:]:
        deny_to(lab, port)
    assert sorted(e["destination"]["port"] for e in lab.audit_events()
                  if e["event"]["action"] == "deny") == list(ports[4:])

    def denies() -> int:
        shown = json.loads(lab.nfguard("status", "--json", "--config", str(config)).stdout)
        return int(shown["denies"]["total"])

    lab.wait_until(lambda: denies() == len(ports), timeout=5)  # workers report each second
    assert lab.stop_engine() == 0
