"""Client matching end to end: the engine attributes each new flow to its process, user and
cgroup, and the first client whose match table holds decides."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.e2e.lab import ALLOWED_V4, Lab

CURL = os.path.realpath(shutil.which("curl") or "/usr/bin/curl")
PYTHON = os.path.realpath(sys.executable)
URL = f"http://{ALLOWED_V4}:80/"

# Every client may reach ALLOWED_V4:80 or not; what differs is who they are.
POLICY = """
    {clients}

    [[client]]
    name = "everyone-else"
    policies = ["deny-all"]

    [[policy]]
    name = "web"

    [[policy.rule]]
    action = "allow"
    to = ["198.18.1.0/24"]
    ports = [80]
    proto = "tcp"

    [[policy]]
    name = "deny-all"

    [[policy.rule]]
    name = "all"
    action = "deny"
    to = ["0.0.0.0/0", "::/0"]
"""


def client(name: str, policies: str = "web", **match: str) -> str:
    table = ", ".join(f'{key} = "{value}"' for key, value in match.items())
    return (f'[[client]]\nname = "{name}"\nmatch = {{ {table} }}\n'
            f'policies = ["{policies}"]\n')


def start(lab: Lab, *clients: str) -> None:
    lab.serve_http(80)
    lab.start_engine(lab.write_config(POLICY.format(clients="\n".join(clients))))


def urllib_get(lab: Lab, url: str = URL, ns: str | None = None) -> str:
    """'ok' or the error python's urllib met (from the client host or namespace `ns`)."""
    code = ("import sys, urllib.request\n"
            "try:\n"
            "    urllib.request.urlopen(sys.argv[1], timeout=3).read()\n"
            "    print('ok')\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__)\n")
    return lab.exec(ns or lab.client, PYTHON, "-c", code, url).stdout.strip()


def events_from(lab: Lab, exe: str) -> list[dict]:
    return [e for e in lab.audit_events() if e.get("process", {}).get("executable") == exe]


def test_curl_allowed_python_denied_same_destination(lab: Lab) -> None:
    start(lab, client("curl", exe=CURL))
    assert lab.curl(ALLOWED_V4, 80) == (0, "port 80\n")
    assert urllib_get(lab) != "ok"
    curl = lab.wait_for_event(lambda e: e.get("process", {}).get("executable") == CURL)
    python = lab.wait_for_event(lambda e: e.get("process", {}).get("executable") == PYTHON)
    assert (curl["nfguard"]["client"], curl["event"]["action"]) == ("curl", "allow")
    assert (python["nfguard"]["client"], python["event"]["action"]) == ("everyone-else", "deny")
    assert python["rule"]["name"] == "deny-all/all"
    assert python["process"]["command_line"].startswith(PYTHON + " -c ")


def test_exe_by_sha256_and_glob(lab: Lab) -> None:
    digest = hashlib.sha256(Path(CURL).read_bytes()).hexdigest()
    start(lab, client("curl-by-hash", sha256=digest),
          client("pythons", exe=os.path.dirname(PYTHON) + "/python3*"))
    assert lab.curl(ALLOWED_V4, 80)[0] == 0
    assert urllib_get(lab) == "ok"
    event = lab.wait_for_event(lambda e: e.get("process", {}).get("executable") == CURL)
    assert event["nfguard"]["client"] == "curl-by-hash"
    assert event["process"]["hash"] == {"sha256": digest}
    python = lab.wait_for_event(lambda e: e.get("process", {}).get("executable") == PYTHON)
    assert python["nfguard"]["client"] == "pythons"


@pytest.mark.skipif(shutil.which("runuser") is None, reason="no runuser")
def test_rule_by_user_and_group(lab: Lab) -> None:
    start(lab, client("nobody", user="nobody"), client("root-group", policies="deny-all",
                                                     group="0"))
    as_nobody = lab.exec(lab.client, "runuser", "-u", "nobody", "--", CURL, "-sS",
                         "--max-time", "3", URL)
    assert (as_nobody.returncode, as_nobody.stdout) == (0, "port 80\n")
    assert lab.curl(ALLOWED_V4, 80)[0] != 0, "root's curl is denied"
    nobody = lab.wait_for_event(lambda e: e.get("user", {}).get("name") == "nobody")
    assert nobody["nfguard"]["client"] == "nobody" and nobody["event"]["action"] == "allow"
    assert nobody["user"]["id"] == str(65534)
    root = lab.wait_for_event(lambda e: e.get("user", {}).get("name") == "root")
    assert root["nfguard"]["client"] == "root-group" and root["event"]["action"] == "deny"


@pytest.mark.skipif(shutil.which("runuser") is None, reason="no runuser")
def test_udp_sender_gone_before_its_lookup_is_known_by_its_uid(lab: Lab) -> None:
    """nobody's shell sends one datagram and exits while the engine is stopped, so when the
    engine reads the packet the socket is gone: the uid the kernel queued with the packet
    still picks nobody's client and names the user in the audit event."""
    start(lab, client("nobody", user="nobody"))
    lab.engine.send_signal(signal.SIGSTOP)
    try:
        sent = lab.exec(lab.client, "runuser", "-u", "nobody", "--", "bash", "-c",
                        f"echo ping > /dev/udp/{ALLOWED_V4}/9999")
        assert sent.returncode == 0, sent.stderr
        lab.wait_until(lambda: lab.queue_counters()[0].length == 1)
        sockets = lab.exec(lab.client, "ss", "-Hun", "dport = :9999").stdout
        assert sockets.strip() == "", "the sender's socket is gone before the lookup"
    finally:
        lab.engine.send_signal(signal.SIGCONT)
    event = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 9999)
    assert event["nfguard"]["client"] == "nobody"
    assert event["user"] == {"id": "65534", "name": "nobody"}
    assert "process" not in event, "no process is made up for a socket that is gone"


def test_rule_by_cgroup_and_unit(lab: Lab, test_cgroup: Path) -> None:
    relative = "/" + test_cgroup.name
    start(lab, client("by-cgroup", cgroup=relative, exe="/nonexistent"),  # must not match
          client("by-unit", unit=test_cgroup.name))
    # The shell moves itself into the cgroup, then becomes curl.
    inside = lab.exec(lab.client, "sh", "-c", 'echo $$ > "$0"/cgroup.procs && exec "$@"',
                      str(test_cgroup), CURL, "-sS", "--max-time", "3", URL)
    assert (inside.returncode, inside.stdout) == (0, "port 80\n")
    assert lab.curl(ALLOWED_V4, 80)[0] != 0, "the same curl outside the cgroup is denied"
    event = lab.wait_for_event(lambda e: e.get("nfguard", {}).get("cgroup") == relative)
    assert event["nfguard"]["client"] == "by-unit"
    assert event["nfguard"]["unit"] == test_cgroup.name
    assert event["event"]["action"] == "allow"


def test_hundred_short_lived_curls_all_attributed(lab: Lab) -> None:
    start(lab, client("curl", exe=CURL))
    script = f'for i in $(seq 100); do "{CURL}" -s -o /dev/null --max-time 3 {URL} || exit 1; done'
    assert lab.exec(lab.client, "sh", "-c", script, timeout=120).returncode == 0
    lab.wait_for_event(lambda e: len(events_from(lab, CURL)) >= 100, timeout=10)
    events = events_from(lab, CURL)
    assert len(events) == 100
    assert {e["nfguard"]["client"] for e in events} == {"curl"}
    assert len({e["process"]["pid"] for e in events}) == 100, "each curl its own process"
    assert all(e["user"]["name"] == "root" for e in events)


def test_renamed_process_still_matched_by_exe(lab: Lab) -> None:
    """argv[0] and comm say sshd; /proc/PID/exe says python, and that is what matches."""
    start(lab, client("sshd", exe="/usr/sbin/sshd"),
          client("python", policies="deny-all", exe=PYTHON))
    rename = ("import ctypes, sys, urllib.request\n"
              "ctypes.CDLL(None).prctl(15, b'sshd', 0, 0, 0)\n"  # PR_SET_NAME: comm
              "print(open('/proc/self/comm').read().strip())\n"
              "try:\n"
              "    urllib.request.urlopen(sys.argv[1], timeout=3); print('ok')\n"
              "except Exception as exc:\n"
              "    print(type(exc).__name__)\n")
    # argv[0] no longer leads python to its library: PYTHONHOME does
    result = lab.exec(lab.client, "env", f"PYTHONHOME={sys.base_prefix}", "bash", "-c",
                      'exec -a /usr/sbin/sshd "$0" -c "$1" "$2"', PYTHON, rename, URL)
    comm, outcome = result.stdout.split()
    assert comm == "sshd" and outcome != "ok", result.stderr
    event = lab.wait_for_event(lambda e: e.get("process", {}).get("executable") == PYTHON)
    assert event["process"]["command_line"].startswith("/usr/sbin/sshd -c ")
    assert event["nfguard"]["client"] == "python"
    assert event["event"]["action"] == "deny"
