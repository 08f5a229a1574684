"""Who is talking: process, user and systemd unit of a new outbound flow.

The route a lookup takes is told in procs.attributor; its parts: info (ProcessInfo, what
a lookup answers), search (who holds a socket), entries (what was read of a process),
counters, and the kernel interfaces (sockdiag, cgroups, cnproc, owners, process, netns).
"""

from nfguard.procs.attributor import Attributor
from nfguard.procs.info import UNKNOWN, ProcessInfo

__all__ = ["UNKNOWN", "Attributor", "ProcessInfo"]
