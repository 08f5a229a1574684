"""Attribution that cannot be fooled cheaply: a flow belongs to the program that made it.

The policy lets only /usr/bin/curl reach the recorder. Each attacker is unprivileged
python that gets its own bytes into a connection nfguard takes for curl's:
- exec: it connects, then execs curl with the socket inherited (the exe, read at
  decision time, now says curl); a sibling that shares the socket writes the marker;
- handover: it connects, forks a child that execs curl with the socket, and exits (the
  only holder left is a fresh curl);
- bind mount: in a user and mount namespace of its own, python bind-mounted over
  /usr/bin/curl (its exe link reads /usr/bin/curl);
- late parent: it forks its payload, then execs curl: the payload's parent is curl now
  (a client of curl's children lets it out), but curl did not start it.
The engine is stopped (SIGSTOP) while the attacker sets up, as a busy engine would be
late, so the SYN is looked up after the exec: the race is won every time, not sometimes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from tests.e2e.lab import ALLOWED_V4, SLOWDOWN, Lab

CURL = os.path.realpath(shutil.which("curl") or "/usr/bin/curl")
SYS_PY = "/usr/bin/python3"
PORT = 8443
NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")

pytestmark = pytest.mark.skipif(
    not os.access(SYS_PY, os.X_OK) or shutil.which("setpriv") is None
    or shutil.which("unshare") is None, reason="needs /usr/bin/python3, setpriv, unshare")

POLICY = f"""
    [[client]]
    name = "curl"
    match = {{ exe = "{CURL}" }}
    policies = ["recorder"]

    [[client]]
    name = "started-by-curl"
    match = {{ parent_exe = "{CURL}" }}
    policies = ["recorder"]

    [[client]]
    name = "container-curl"
    match = {{ interface = "docker0", exe = "{CURL}" }}
    policies = ["recorder"]

    [[client]]
    name = "everyone-else"
    policies = ["deny-all"]

    [[policy]]
    name = "recorder"

    [[policy.rule]]
    action = "allow"
    to = ["{ALLOWED_V4}"]
    ports = [{PORT}]

    [[policy]]
    name = "deny-all"

    [[policy.rule]]
    action = "deny"
    to = ["0.0.0.0/0", "::/0"]
"""

# argv: mode ("exec" | "handover"), proto, curl, host, port, marker. Connects (UDP: and
# sends a first datagram), then prints "ready" once the socket's only holder is a curl
# process (and, for handover, its connector has exited), waits for a line on stdin (the
# engine runs again), takes the socket out of that curl (pidfd_getfd: it is our child)
# and writes the marker once connected.
ATTACKER = r"""
import ctypes, os, select, socket, sys, time
mode, proto, curl, host, port, marker = sys.argv[1:7]
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: an orphaned curl stays our child
hold_r, hold_w = os.pipe()  # curl's stdin: never written, so `curl -K -` waits on it
info_r, info_w = os.pipe()
connector = os.fork()
if connector == 0:
    s = socket.socket(type=socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        s.connect((host, int(port)))
    except BlockingIOError:
        pass
    if proto == "udp":
        s.send(b"hello")
    os.set_inheritable(s.fileno(), True)
    fd = s.fileno()
    holder = os.fork() if mode == "handover" else 0
    if holder == 0:
        if mode == "exec":
            os.write(info_w, f"{os.getpid()} {fd}\n".encode())
        os.dup2(hold_r, 0)
        os.execv(curl, [curl, "-s", "-K", "-"])
    os.write(info_w, f"{holder} {fd}\n".encode())
    os._exit(0)
holder, fd = map(int, os.read(info_r, 100).split())
gone = mode == "exec"  # the connector is the holder; else it must have exited
for _ in range(500):
    gone = gone or os.waitpid(connector, os.WNOHANG)[0] == connector
    exe = os.readlink(f"/proc/{holder}/exe")
    if exe == curl and gone:
        break
    time.sleep(0.01)
print("ready", exe, flush=True)
sys.stdin.readline()
pidfd = os.pidfd_open(holder)
libc.syscall.restype = ctypes.c_long
mine = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
if mine < 0:
    print("getfd failed", ctypes.get_errno(), flush=True)
    sys.exit(1)
s = socket.socket(type=socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM,
                  fileno=mine)
select.select([], [s], [], 5)
err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
try:
    s.setblocking(True)
    s.sendall(marker.encode())
    print("sent", err, flush=True)
except OSError as e:
    print("refused", e, flush=True)
time.sleep(1)
"""

# In a user and mount namespace of its own (no privilege needed), python bind-mounted
# over /usr/bin/curl: run as "/usr/bin/curl", its exe link shows /usr/bin/curl.
IMPOSTOR = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
    "s.sendall(sys.argv[3].encode())\n"
    "print('sent', flush=True)\n"
)


def _start(lab: Lab, proto: str = "tcp", where: str = "host"):  # type: ignore[no-untyped-def]
    """The recorders and the engine; curl itself passes (from the host or the container)."""
    if where == "container":
        lab.add_container("docker0")
    recording = lab.record_tcp(ALLOWED_V4, PORT)
    udp = lab.record_udp(ALLOWED_V4, PORT) if proto == "udp" else None
    lab.start_engine(lab.write_config(POLICY))
    legit = f"legit-{uuid.uuid4().hex}"
    out = lab.exec(_namespace(lab, where), *NOBODY, CURL, "-s", "-m", "5", "-o", "/dev/null",
                   f"http://{ALLOWED_V4}:{PORT}/{legit}")
    assert out.returncode in (0, 52, 28), out  # the recorder answers nothing
    lab.wait_until(lambda: recording.contains(legit.encode()))  # curl itself passes
    return recording if udp is None else udp


def _namespace(lab: Lab, where: str) -> str:
    return lab.container if where == "container" else lab.client


def _arrived(recording, marker: str) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 2 * SLOWDOWN
    while time.monotonic() < deadline:
        if recording.contains(marker.encode()):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(("mode", "proto", "where"), [
    ("exec", "tcp", "host"), ("handover", "tcp", "host"),
    ("exec", "udp", "host"), ("handover", "udp", "host"),
    ("exec", "tcp", "container"), ("handover", "udp", "container"),  # forwarded flows
])
def test_socket_passed_to_curl_is_not_curls(lab: Lab, mode: str, proto: str,
                                            where: str) -> None:
    recording = _start(lab, proto, where)
    marker = f"{mode}-{proto}-{where}-{uuid.uuid4().hex}"
    assert lab.engine is not None
    lab.engine.send_signal(signal.SIGSTOP)
    attacker = lab.spawn(_namespace(lab, where), *NOBODY, SYS_PY, "-c", ATTACKER, mode, proto, CURL,
                         ALLOWED_V4, str(PORT), marker, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout is not None and attacker.stdin is not None
        line = attacker.stdout.readline()
        assert line.split() == ["ready", CURL], line
    finally:
        lab.engine.send_signal(signal.SIGCONT)
    attacker.stdin.write("go\n")
    attacker.stdin.flush()
    result = attacker.stdout.readline().strip()
    arrived = _arrived(recording, marker)
    attacker.kill()
    assert not arrived, f"the marker got through as curl's ({result})"
    deny = lab.wait_for_event(lambda e: e.get("event", {}).get("action") == "deny"
                              and e.get("destination", {}).get("port") == PORT)
    assert deny["nfguard"]["client"] == "everyone-else", deny
    assert "pid" not in deny.get("process", {}), "never another holder's"


def test_binary_bind_mounted_over_curl_is_not_curl(lab: Lab) -> None:
    recording = _start(lab)
    marker = f"bind-{uuid.uuid4().hex}"
    script = ('mount --bind "$0" "$1" && exec "$1" -c "$2" "$3" "$4" "$5"')
    out = lab.exec(lab.client, *NOBODY, "unshare", "-Urm", "sh", "-c", script,
                   os.path.realpath(SYS_PY), CURL, IMPOSTOR, ALLOWED_V4, str(PORT), marker)
    arrived = _arrived(recording, marker)
    assert not arrived, f"the impostor got through as curl ({out.stdout}{out.stderr})"
    deny = lab.wait_for_event(lambda e: e.get("event", {}).get("action") == "deny"
                              and e.get("destination", {}).get("port") == PORT)
    assert deny["process"]["executable"] == CURL, deny  # what it showed, not what matched


# argv: curl, host, port, marker. The parent forks the payload and execs curl (waiting on
# a pipe only the payload holds); the payload connects once the parent's exec closed its
# other pipe, and writes the marker.
LATE_PARENT = r"""
import os, socket, sys, time
curl, host, port, marker = sys.argv[1:5]
hold_r, hold_w = os.pipe()  # curl's stdin: the payload holds the write end
told_r, told_w = os.pipe()  # close-on-exec: EOF once the parent is curl
if os.fork() == 0:
    os.close(told_w)
    os.read(told_r, 1)
    time.sleep(0.2)
    try:
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(marker.encode())
        print("sent", flush=True)
    except OSError as e:
        print("refused", e, flush=True)
    time.sleep(1)
    os._exit(0)
os.dup2(hold_r, 0)
os.execv(curl, [curl, "-s", "-K", "-"])
"""


def test_parent_that_became_curl_after_forking_did_not_start_it(lab: Lab) -> None:
    recording = _start(lab)
    marker = f"parent-{uuid.uuid4().hex}"
    out = lab.exec(lab.client, *NOBODY, SYS_PY, "-c", LATE_PARENT, CURL, ALLOWED_V4,
                   str(PORT), marker, timeout=30)
    arrived = _arrived(recording, marker)
    assert not arrived, f"the payload got through as curl's child ({out.stdout})"
    deny = lab.wait_for_event(lambda e: e.get("event", {}).get("action") == "deny"
                              and e.get("destination", {}).get("port") == PORT)
    assert deny["nfguard"]["client"] == "everyone-else", deny
