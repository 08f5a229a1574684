"""The gap another program's ruleset reload leaves (nftables.service: `flush ruleset`, then
its own tables), held open for as long as a test needs: the engine is stopped (SIGSTOP)
across the reload, so its change events wait in its socket and its table is back only
once it goes on. A flow opened in it, kept open by a process of its own, shows whether
the restore cuts it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator

from tests.e2e.lab import Lab, Recording

# One flow (TCP or UDP) that sends "first-TAG" at once (over UDP, waits for its echo),
# then for each line on stdin sends the line, waits and sends it again (a cut shows at the
# second send at the latest): prints "open", then "sent" or "cut ..." for each line.
FLOW = """
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM if sys.argv[3] == "tcp" else socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(("first-" + sys.argv[4]).encode())
if s.type == socket.SOCK_DGRAM:
    s.recv(2048)  # the echo: conntrack has seen a reply, the flow is established
print("open", flush=True)
for line in sys.stdin:
    try:
        s.send(line.strip().encode()); time.sleep(0.3); s.send(line.strip().encode())
        print("sent", flush=True)
    except OSError as exc:
        print("cut", exc, flush=True)
"""


class Flow:
    """A flow from namespace `ns`, kept open by a process of its own."""

    def __init__(self, lab: Lab, ns: str, server: str, port: int, proto: str,
                 tag: str) -> None:
        self.proc = lab.spawn(ns, sys.executable, "-u", "-c", FLOW, server, str(port),
                              proto, tag, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
        assert self._line() == "open", "the flow did not open"

    def send(self, text: str) -> str:
        """'sent', or 'cut ...' when the connection was cut."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()


def recorder(lab: Lab, server: str, port: int, proto: str) -> Recording:
    """What reaches the server's port; over UDP it answers, as a channel's server would."""
    if proto == "tcp":
        return lab.record_tcp(server, port)
    return lab.record_udp(server, port, echo=True)


def restores(lab: Lab) -> int:
    return lab.engine_log.read_text().count("ruleset was changed")


@contextlib.contextmanager
def gap(lab: Lab, ns: str, ruleset: str) -> Iterator[None]:
    """Namespace `ns` (the engine's) reloads its ruleset as nftables.service does: `flush
    ruleset`, then `ruleset`. nfguard's table is gone inside, back on the way out (the
    engine restores once it goes on). `ruleset` must use conntrack (a `ct` match, as a
    host's firewall does): with no other user in `ns`, conntrack stops tracking there
    while nfguard's table is gone, and a flow made then has no entry to cut."""
    assert lab.engine is not None
    before = restores(lab)
    lab.engine.send_signal(signal.SIGSTOP)
    try:
        lab.exec(ns, "nft", "-f", "-", check=True, input="flush ruleset\n" + ruleset)
        yield
    finally:
        lab.engine.send_signal(signal.SIGCONT)
    lab.wait_until(lambda: restores(lab) > before, timeout=5)
