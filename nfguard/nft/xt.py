"""The xt path: where the kernel has no nft `queue` expression, the queue step is an
iptables-nft NFQUEUE rule per chain, family and worker, in iptables' security table.

Pure: the rules as data, and how they are spelt on a command line; the installer runs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nfguard import marks
from nfguard.config import EngineConfig

XT_COMMENT = "nfguard queue"
XT_TOOLS = ("iptables", "ip6tables")
XT_CHAINS = ("OUTPUT", "INPUT", "FORWARD")
# The xt rules live in iptables' security table, which runs after the filter table: a
# queued packet's accept ends only the chain that queued it, so in the filter table it
# would skip the host's own iptables rules after ours (Docker's isolation, ufw).
XT_TABLE = "security"
XT_OLD_TABLES = ("filter",)  # where earlier versions put them: removed on install too


@dataclass(frozen=True, slots=True)
class XtRule:
    """One xt NFQUEUE rule in XT_TABLE: new flows in OUTPUT, DNS answers in INPUT, both in
    FORWARD; `position` in the chain (1 is the top) keeps a family's per-worker rules in
    order, catch-all last."""

    binary: str
    chain: str
    position: int
    spec: tuple[str, ...]

    def arguments(self) -> tuple[str, ...]:
        """What the binary is given to insert the rule."""
        return ("-t", XT_TABLE, "-I", self.chain, str(self.position), *self.spec)

    def command(self) -> str:
        return " ".join([self.binary, *map(quote, self.arguments())])


def queue_rules(settings: EngineConfig, bypass: bool) -> tuple[XtRule, ...]:
    """Per chain and family, one NFQUEUE rule per worker. The xt target can only hash
    addresses (`--queue-balance`), which would put every flow between two hosts on one
    worker; so each worker's rule takes its share of the local port instead (`u32`), and
    the last rule takes what is left, so no queued packet passes unanswered. A flow keeps
    its port: every packet of a flow meets the same worker. In FORWARD the container's
    port is the source of a flow's packets and the destination of its DNS answers."""
    # QUEUED, but not the engine's own refusals (marks.INJECTED carries the QUEUED bit)
    common = ("-m", "mark", "--mark", f"0x{marks.QUEUED:08x}/0x{marks.QUEUED:08x}",
              "-m", "mark", "!", "--mark", f"0x{marks.INJECTED:08x}/0x{marks.MASK:08x}",
              "-m", "comment", "--comment", XT_COMMENT)
    tail = ("--queue-bypass",) if bypass else ()
    workers = settings.workers
    shares = _port_shares(workers)
    source, destination = 17, 1  # u32 shifts: the local port is the source / destination
    groups: list[tuple[str, int, tuple[str, ...]]] = [("OUTPUT", source, ()),
                                                      ("INPUT", destination, ())]
    if settings.forward_from and workers == 1:
        groups.append(("FORWARD", source, ()))
    elif settings.forward_from:
        groups += [("FORWARD", source, ("-m", "conntrack", "--ctdir", "ORIGINAL")),
                   ("FORWARD", destination, ("-m", "conntrack", "--ctdir", "REPLY"))]
    rules = []
    for binary, transport in zip(XT_TOOLS, _TRANSPORT_HEADER, strict=True):
        positions: dict[str, int] = {}
        for chain, shift, direction in groups:
            for worker in range(workers):
                share = (() if worker == workers - 1 else (
                    "-m", "u32", "--u32", f"{transport}>>{shift}&{shares[worker]}"))
                positions[chain] = positions.get(chain, 0) + 1
                rules.append(XtRule(binary, chain, positions[chain], (
                    *common, *direction, *share, "-j", "NFQUEUE",
                    "--queue-num", str(settings.queue + worker), *tail)))
    return tuple(rules)


def _port_shares(workers: int) -> list[str]:
    """Each worker's u32 test of the port's low bits, above bit 0: connect() picks even
    ports, each a few steps of 2 after the last, so these bits take turns flow by flow
    (ranges of the port would keep a run of flows on one worker). Values are dealt out in
    turn; at least 16 of them, and never more than u32's 11 per test."""
    values = 1 << max(4, (workers - 1).bit_length())
    return [f"0x{values - 1:X}=" + ",".join(str(v) for v in range(worker, values, workers))
            for worker in range(workers)]


# Where u32 finds the transport header's first 32 bits (source port, destination port):
# IPv4 after its header length, IPv6 after its fixed header. Shifted right by 17 they
# give the source port from bit 1 up, by 1 the destination port's.
_TRANSPORT_HEADER = ("0>>22&0x3C@0", "40")


def quote(arg: str) -> str:
    """An argument as a shell reads it back (the u32 tests hold & and >)."""
    return arg if re.fullmatch(r"[\w.:/,=+-]+", arg) else f'"{arg}"'
