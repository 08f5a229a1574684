"""The systemd unit: rendered for the nfguard being run (`nfguard install --systemd`); the
copy in systemd/nfguard.service is the one rendered for `./bootstrap.sh run`'s layout.

Why the unit looks the way it does:
- Type=notify: nfguard says READY=1 once the queue is bound, so units ordered after it start
  with the firewall in place; RELOADING=1/READY=1 around reloads; WATCHDOG=1 from the loop.
  (Type=notify-reload needs systemd 253; Debian 12 has 252, so ExecReload is explicit.)
- After= the services that load a whole ruleset at boot (they run before
  network-pre.target too), so they do not flush nfguard's table right after it was
  installed. Docker starts after the network is up, which is after nfguard: it cannot be
  ordered before it without a cycle, and needs not be (nfguard.ruleset_watch restores
  whatever a later flush or restore takes, from any of them).
- ExecReload runs `nfguard reload`, which waits for the outcome: a rejected policy fails
  `systemctl reload` with the file and line, and the running policy stays.
- Root, but only the capabilities the engine uses: CAP_NET_ADMIN (nftables, NFQUEUE,
  sock_diag, the process connector, attaching the socket-owner recorder to the cgroup
  root), CAP_BPF (loading that recorder and its map), CAP_PERFMON (attaching the exec
  recorder to the sched_prepare_exec / sched_process_exec tracepoints, so a flow is never
  taken for a program its process exec'd after connecting), CAP_SYS_PTRACE and
  CAP_DAC_READ_SEARCH (reading /proc/PID/fd and /proc/PID/exe of other users' processes to
  name who opened a socket). No CAP_DAC_OVERRIDE, CAP_SETUID, CAP_SYS_ADMIN, ...;
  ptrace() itself is not in the system call filter; bpf() is let back in (the @privileged
  set holds it). Without CAP_BPF the engine searches /proc instead. The file system is
  read-only but for the log and runtime directories.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from nfguard.config import DEFAULT_PATH

UNIT_NAME = "nfguard.service"
UNIT_DIR = "/etc/systemd/system"
BOOTSTRAP_COMMAND = "/usr/local/sbin/nfguard"  # the link ./bootstrap.sh run makes
CAPABILITIES = ("CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH")
# Services that load a whole ruleset at boot (nftables.service's `flush ruleset`, firewalld,
# iptables-persistent): nfguard installs after them instead of being flushed and restored.
AFTER = ("nftables.service", "firewalld.service", "netfilter-persistent.service")

_TEMPLATE = """\
# nfguard: host egress firewall (nftables -> NFQUEUE -> engine).
# Rendered by `nfguard install --systemd`; see nfguard/service.py for why it looks so.
[Unit]
Description=nfguard host egress firewall
Documentation=man:nfguard(8) man:nfguard.toml(5)
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target
After=local-fs.target {after}
DefaultDependencies=no

[Service]
Type=notify
NotifyAccess=main
ExecStartPre={command} check --config {config}
ExecStart={command} run --config {config}
ExecReload={command} reload --config {config}
Restart=on-failure
RestartSec=2s
WatchdogSec=30s
TimeoutStartSec=60s
TimeoutStopSec=20s

# Root with only the capabilities the engine uses.
CapabilityBoundingSet={capabilities}
NoNewPrivileges=yes

# Read-only file system but for the audit log and the control socket.
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
LogsDirectory=nfguard
LogsDirectoryMode=0750
RuntimeDirectory=nfguard
RuntimeDirectoryMode=0700
ReadWritePaths=/var/log/nfguard /run/nfguard
UMask=0077

PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallFilter=bpf
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def render_unit(command: str = BOOTSTRAP_COMMAND, config: str = DEFAULT_PATH) -> str:
    return _TEMPLATE.format(command=command, config=shlex.quote(config),
                            capabilities=" ".join(CAPABILITIES), after=" ".join(AFTER))


def this_command() -> str:
    """How systemd should start the nfguard that is running now: its console script when
    it is installed beside the interpreter, else `python -m nfguard`."""
    script = Path(sys.executable).parent / "nfguard"
    if script.is_file():
        return str(script)
    return f"{sys.executable} -m nfguard"
