"""The Attributor's counters: how each lookup was settled, and what it cost (metrics)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Counters:
    """lookups = recorded + hits + misses + (lookups that found no socket or inode) + errors;
    recorded: settled by the kernel's record of the socket's owner (owners); refused: the
    record names a process that exited or exec'd since it connected: no process is given
    for those, never another holder; unrecorded: records are kept but there is none for the
    socket, so its holder is searched for and given as unproven (also counted below).
    misses that the cgroup route could not settle are also counted in fallbacks;
    failures counts lookups that ended without a pid. forwarded: lookups of forwarded
    flows (lookup_forwarded), outside the sum above. pids_probed: pids looked at (one
    fstat); pids_scanned: pids whose fd list was read; procs_reads: cgroup.procs reads;
    events: process events folded in."""

    lookups: int = 0
    recorded: int = 0
    refused: int = 0
    unrecorded: int = 0
    hits: int = 0
    misses: int = 0
    fallbacks: int = 0
    failures: int = 0
    no_socket: int = 0
    errors: int = 0
    pids_probed: int = 0
    pids_scanned: int = 0
    procs_reads: int = 0
    events: int = 0
    forwarded: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "lookups": self.lookups,
            "recorded": self.recorded,
            "refused": self.refused,
            "unrecorded": self.unrecorded,
            "hits": self.hits,
            "misses": self.misses,
            "fallbacks": self.fallbacks,
            "failures": self.failures,
            "no_socket": self.no_socket,
            "errors": self.errors,
            "pids_probed": self.pids_probed,
            "pids_scanned": self.pids_scanned,
            "procs_reads": self.procs_reads,
            "events": self.events,
            "forwarded": self.forwarded,
        }
