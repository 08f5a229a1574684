"""The nftables ruleset: rendered from the config (pure), then loaded atomically.

nfguard owns one table, `inet nfguard`. Where the kernel lacks nft's native `queue`
expression, the single queue step goes through the xt NFQUEUE target with iptables-nft
(one rule per family, tagged with a comment so uninstall removes exactly it).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections import deque
from dataclasses import dataclass

from nfguard import marks
from nfguard.config import EngineConfig

TABLE = "nfguard"
NATIVE = "native"
XT = "xt"
PATH_DESCRIPTIONS = {
    NATIVE: "native nft queue",
    XT: "xt NFQUEUE target via iptables-nft (this kernel has no nft queue expression)",
}
XT_COMMENT = "nfguard queue"
XT_TOOLS = ("iptables", "ip6tables")
XT_CHAINS = ("OUTPUT", "INPUT", "FORWARD")
# The xt rules live in iptables' security table, which runs after the filter table: a
# queued packet's accept ends only the chain that queued it, so in the filter table it
# would skip the host's own iptables rules after ours (Docker's isolation, ufw).
XT_TABLE = "security"
XT_OLD_TABLES = ("filter",)  # where earlier versions put them: removed on install too
# The verdict chains run after that table (iptables-nft 1.8.9 gives it priority 150; the
# kernel's legacy security table hooks at 50) and after the filter table, so another
# firewall's drop comes first.
VERDICT_PRIORITY = 200

OWN_PIDS = 256  # pids of nfguard's own recent commits remembered (Installer.pids)

# Link-local control traffic of IPv6 that must never wait for a policy (and IGMP, MLD's
# IPv4 twin, to the link-local multicast block).
_NDP = (
    "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, "
    "mld-listener-report, mld-listener-done, mld2-listener-report"
)
_KEEP_USER_BITS = f"0x{~marks.MASK & 0xFFFFFFFF:08x}"


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
        return " ".join([self.binary, *map(_quote, self.arguments())])


@dataclass(frozen=True, slots=True)
class Ruleset:
    path: str  # NATIVE | XT
    nft: str  # text for `nft -f`
    xt_rules: tuple[XtRule, ...]

    def describe(self) -> str:
        text = f"# queue path: {PATH_DESCRIPTIONS[self.path]}\n{self.nft}"
        for rule in self.xt_rules:
            text += f"\n# and: {rule.command()}"
        return text + ("\n" if self.xt_rules else "")


def render(settings: EngineConfig, path: str) -> Ruleset:
    """The whole ruleset for one queue path; `nft/` in the repository holds rendered copies."""
    bypass = settings.fail == "open"
    last = settings.queue + settings.workers - 1
    queues = f"{settings.queue}-{last}" if last > settings.queue else str(settings.queue)
    if settings.workers == 1:
        queue_num = f"queue num {queues}{' bypass' if bypass else ''}"
    else:
        # Several workers: a symmetric hash of addresses and ports picks the queue, so
        # flows between the same two hosts spread, and every packet of a flow meets the
        # same worker. (`queue num a-b` would hash the addresses only.)
        queue_num = (f"queue {'flags bypass ' if bypass else ''}to symhash mod "
                     f"{settings.workers} offset {settings.queue}")
    if path == NATIVE:
        queue_step = f"\t\t{queue_num}\t# to the engine"
        dns_queue = f" {queue_num}"
    else:
        queue_step = (f"\t\t# the queue step itself is the xt NFQUEUE rule in iptables' "
                      f"{XT_TABLE} table")
        dns_queue = ""
    loopback = (
        "" if settings.filter_loopback
        else '\t\toifname "lo" accept\t# loopback is not filtered (engine.filter_loopback)\n'
    )
    if bypass:
        unanswered = (
            f"\t\tmeta mark & 0x{marks.QUEUED:08x} != 0 meta mark set meta mark & "
            f"{_KEEP_USER_BITS} accept\t# fail open: no engine was bound, let it pass"
        )
    else:
        unanswered = (
            f"\t\tmeta mark & 0x{marks.QUEUED:08x} != 0 drop"
            "\t# fail closed: queued but no verdict came back"
        )
    verdict_bits = f"0x{marks.MASK:08x}"
    ct_field = f"0x{marks.VERDICT_MASK:08x}"
    queued = f"0x{marks.QUEUED:08x}"
    dns_where = "queued to the engine" + (
        f" (by the xt rule in iptables' {XT_TABLE} INPUT)" if path == XT else "")
    nft = f"""\
# nfguard egress ruleset (engine mode {settings.mode}, fail {settings.fail}, queue {queues}).
# Rendered by `nfguard install`; nfguard owns this table and nothing else.
# Verdicts live in the ct mark under {ct_field}: allow 0x{marks.ALLOW:08x}, deny 0x{marks.DENY:08x},
# pending 0x{marks.PENDING:08x} (the decision waits for the name the client presents).
table inet {TABLE} {{
\t# Locally generated packets.
\tchain output {{
\t\ttype filter hook output priority filter - 10; policy accept;
{loopback}\t\ticmpv6 type {{ {_NDP} }} accept\t# IPv6 neighbour discovery and MLD
\t\tip protocol igmp ip daddr 224.0.0.0/24 accept\t# IPv4 multicast membership (IGMP), link-local
\t\tct direction reply accept\t# replies to flows others started; the resets and ICMP errors of our own cuts
\t\tjump egress
\t}}
{_forward_chain(settings.forward_from, dns_queue)}
\t# A flow's packets. Decided flows never leave the kernel; new ones are marked {queued}
\t# and handed to the engine, and so are the packets of pending flows (marked
\t# 0x{marks.QUEUED | marks.PENDING:08x}) until the engine has seen the name.
\tchain egress {{
\t\tct mark & {ct_field} == 0x{marks.ALLOW:08x} accept\t# decided: allowed
\t\tct mark & {ct_field} == 0x{marks.DENY:08x} jump cut\t# decided: denied
\t\tct mark & {ct_field} == 0x{marks.PENDING:08x} meta l4proto tcp jump bare\t# pending, no payload: nothing to read
\t\tct mark & {ct_field} == 0x{marks.PENDING:08x} meta mark set meta mark | 0x{marks.PENDING:08x}\t# pending: to the engine again
\t\tct mark & {ct_field} != 0x{marks.PENDING:08x} ct state established,related accept\t# flows that predate nfguard, ICMP errors
\t\tmeta mark set meta mark | {queued}
{queue_step}
\t}}

\t# TCP segments of pending flows that carry no payload (the handshake's ACK, window
\t# updates, FIN, RST): the engine waits for the bytes that hold the name, these have none,
\t# so they pass here instead of costing a trip through the queue each. Packets with IPv4
\t# options or IPv6 extension headers still go to the engine.
\tchain bare {{
{_bare_tcp_rules()}
\t}}

\t# After the engine and the host's own iptables: the verdict comes back as mark bits.
\tchain verdict {{
\t\ttype filter hook output priority {VERDICT_PRIORITY}; policy accept;
\t\tjump settle
\t}}

\t# A flow's verdict: keep it in the ct mark (user bits outside {verdict_bits} are
\t# preserved) and clear the packet bits again.
\tchain settle {{
\t\tmeta mark & {verdict_bits} == 0x{marks.ALLOW:08x} ct mark set ct mark & {_KEEP_USER_BITS} | 0x{marks.ALLOW:08x} meta mark set meta mark & {_KEEP_USER_BITS} accept
\t\tmeta mark & {verdict_bits} == 0x{marks.DENY:08x} ct mark set ct mark & {_KEEP_USER_BITS} | 0x{marks.DENY:08x} meta mark set meta mark & {_KEEP_USER_BITS} jump cut
\t\tmeta mark & {verdict_bits} == 0x{marks.PENDING:08x} ct mark set ct mark & {_KEEP_USER_BITS} | 0x{marks.PENDING:08x} meta mark set meta mark & {_KEEP_USER_BITS} accept
{unanswered}
\t}}

\t# DNS answers, on every interface (loopback too: a local stub resolver answers there),
\t# are {dns_where} so it learns their names before the client can use them.
\t# Only replies to queries this host sent: an unsolicited "answer" teaches nothing.
\tchain input {{
\t\ttype filter hook input priority filter - 10; policy accept;
\t\tudp sport 53 ct direction reply meta mark set meta mark | {queued}{dns_queue}
\t\ttcp sport 53 ct direction reply meta mark set meta mark | {queued}{dns_queue}
\t}}

\tchain input_verdict {{
\t\ttype filter hook input priority {VERDICT_PRIORITY}; policy accept;
\t\tjump settle_answer
\t}}

\t# The engine accepts every answer (after learning it) or drops an out-of-order TCP
\t# segment; the ct mark is not touched here.
\tchain settle_answer {{
\t\tmeta mark & {verdict_bits} == 0x{marks.ALLOW:08x} meta mark set meta mark & {_KEEP_USER_BITS} accept
\t\tmeta mark & {verdict_bits} == 0x{marks.DENY:08x} drop
{unanswered}
\t}}

\t# A denied flow is cut so the client fails at once instead of retrying.
\tchain cut {{
\t\tmeta l4proto tcp reject with tcp reset
\t\treject with icmpx admin-prohibited
\t}}
}}
"""  # noqa: E501
    xt_rules = _xt_rules(settings, bypass) if path == XT else ()
    return Ruleset(path, nft, xt_rules)


def _forward_chain(interfaces: tuple[str, ...], dns_queue: str) -> str:
    """The forward hook's chains, for flows from engine.forward_from's interfaces (none:
    forwarded traffic is left alone). Their new flows go through `egress` like the host's
    own, in their original direction only (a pending flow's server data is not the
    client's); DNS answers on their way to those interfaces are learnt first, marked
    ANSWER so the engine tells them from flows (sport 53 alone is the sender's choice)."""
    if not interfaces:
        return ""
    names = "{ " + ", ".join(f'"{name}"' for name in interfaces) + " }"
    answer = f"0x{marks.ANSWER:08x}"
    return f"""
\t# Forwarded packets of containers and VMs behind {names}
\t# (engine.forward_from): their flows are this host's egress too.
\tchain forward {{
\t\ttype filter hook forward priority filter - 10; policy accept;
\t\tudp sport 53 ct direction reply oifname {names} meta mark set meta mark | {answer}{dns_queue}
\t\ttcp sport 53 ct direction reply oifname {names} meta mark set meta mark | {answer}{dns_queue}
\t\tct direction original iifname {names} jump egress
\t}}

\tchain forward_verdict {{
\t\ttype filter hook forward priority {VERDICT_PRIORITY}; policy accept;
\t\tct direction reply jump settle_answer
\t\tct direction original jump settle
\t}}
"""


def _xt_rules(settings: EngineConfig, bypass: bool) -> tuple[XtRule, ...]:
    """Per chain and family, one NFQUEUE rule per worker. The xt target can only hash
    addresses (`--queue-balance`), which would put every flow between two hosts on one
    worker; so each worker's rule takes its share of the local port instead (`u32`), and
    the last rule takes what is left, so no queued packet passes unanswered. A flow keeps
    its port: every packet of a flow meets the same worker. In FORWARD the container's
    port is the source of a flow's packets and the destination of its DNS answers."""
    common = ("-m", "mark", "--mark", f"0x{marks.QUEUED:08x}/0x{marks.QUEUED:08x}",
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


def _bare_tcp_rules() -> str:
    """One rule per TCP header length (data offset 5-15 words, the common 8 and 5 first):
    the IP length says the packet ends with its TCP header. nft compares a field with a
    constant, not with another field, hence the list."""
    offsets = (8, 5, *(d for d in range(6, 16) if d != 8))
    v4 = [f"\t\tip hdrlength 5 ip length {20 + 4 * d} tcp doff {d} accept" for d in offsets]
    v6 = [f"\t\tip6 nexthdr tcp ip6 length {4 * d} tcp doff {d} accept" for d in offsets]
    return "\n".join(v4 + v6)


def _xt_binary(tool: str) -> str:
    """The nft-backed variant where both are installed (iptables-legacy would not mix)."""
    return f"{tool}-nft" if shutil.which(f"{tool}-nft") else tool


def _xt_restore_binary(tool: str) -> str:
    """iptables-nft-restore where both variants are installed (see _xt_binary)."""
    return f"{tool}-nft-restore" if shutil.which(f"{tool}-nft-restore") else f"{tool}-restore"


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w.:/,=+-]+", arg) else f'"{arg}"'


class NftError(RuntimeError):
    pass


class Installer:
    """Applies and removes the ruleset. Needs CAP_NET_ADMIN in the target network namespace."""

    def __init__(self) -> None:
        import nftables

        self._nft = nftables.Nftables()
        # Who commits nfguard's own changes: this process (libnftables) and each iptables
        # it ran, newest last; nfguard.ruleset_watch tells their batches from others'.
        self.pids: deque[int] = deque([os.getpid()], maxlen=OWN_PIDS)

    def _cmd(self, text: str) -> None:
        rc, _out, err = self._nft.cmd(text)
        if rc != 0:
            raise NftError(err.strip())

    def probe_path(self) -> str:
        """NATIVE if the kernel accepts an nft `queue` rule, else XT. Leaves nothing behind."""
        probe = f"table inet {TABLE}_probe {{\nchain c {{\nqueue num 0 bypass\n}}\n}}\n" \
                f"delete table inet {TABLE}_probe\n"
        rc, _out, _err = self._nft.cmd(probe)
        return NATIVE if rc == 0 else XT

    def installed(self) -> bool:
        rc, _out, _err = self._nft.cmd(f"list table inet {TABLE}")
        return rc == 0

    def install(self, ruleset: Ruleset) -> None:
        """Our table, then the xt queue rules (idempotent)."""
        self.install_table(ruleset)
        self.install_xt(ruleset)

    def install_table(self, ruleset: Ruleset) -> None:
        """Atomic replace of our table (one transaction)."""
        self._cmd(f"table inet {TABLE}\ndelete table inet {TABLE}\n{ruleset.nft}")

    def install_xt(self, ruleset: Ruleset) -> None:
        """The xt queue rules: ours removed wherever they are, then inserted by one
        iptables-restore per family (a process each instead of one per rule)."""
        self._remove_xt_rules()
        for tool in XT_TOOLS:
            lines = [" ".join(map(_quote, ("-I", rule.chain, str(rule.position), *rule.spec)))
                     for rule in ruleset.xt_rules if rule.binary == tool]
            if lines:
                text = f"*{XT_TABLE}\n" + "\n".join(lines) + "\nCOMMIT\n"
                self._run([_xt_restore_binary(tool), "-w", "--noflush"], text)

    def _run(self, argv: list[str], text: str | None = None, check: bool = True) -> None:
        with subprocess.Popen(argv, stdin=subprocess.PIPE if text else subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) as process:
            self.pids.append(process.pid)
            _out, err = process.communicate(text)
        if check and process.returncode != 0:
            raise NftError(f"{' '.join(argv)}: {err.strip()}")

    def uninstall(self) -> bool:
        """Remove exactly what install added; True if anything was there."""
        removed = self._remove_xt_rules()
        if removed:
            self._remove_empty_xt_chains()
        if self.installed():
            self._cmd(f"delete table inet {TABLE}")
            removed = True
        return removed

    def _remove_xt_rules(self) -> bool:
        removed = False
        for binary in map(_xt_binary, XT_TOOLS):
            if not shutil.which(binary):
                continue
            for table in (XT_TABLE, *XT_OLD_TABLES):
                for chain, spec in _tagged_rules(binary, table):
                    # unchecked: a flush between the listing and here took it already
                    self._run([binary, "-w", "-t", table, "-D", chain, *spec],
                              check=False)
                    removed = True
        return removed

    def _remove_empty_xt_chains(self) -> None:
        """iptables-nft makes XT_TABLE and its chains as rules need them, and leaves them
        when the last rule goes. An empty chain that accepts only costs each packet a hook:
        dropped, and the table with its last chain (iptables-nft makes them again when a
        rule needs them). Chains with rules, or that drop, are someone's, and stay."""
        for family in ("ip", "ip6"):
            rc, listing, _err = self._nft.json_cmd({"nftables": [
                {"list": {"table": {"family": family, "name": XT_TABLE}}}]})
            if rc == 0:
                commands = _empty_chain_deletions(family, listing["nftables"])
                if commands:
                    self._cmd("\n".join(commands))


def _empty_chain_deletions(family: str, items: list[dict]) -> list[str]:
    """nft commands that delete XT_TABLE's empty accepting base chains from its JSON listing,
    and the table when nothing else is in it."""
    used = {item["rule"]["chain"] for item in items if "rule" in item}
    chains = [item["chain"] for item in items if "chain" in item]
    idle = [chain["name"] for chain in chains
            if chain.get("policy") == "accept" and chain["name"] not in used]
    others = any(not {"metainfo", "table", "chain"} & item.keys() for item in items)
    if len(idle) == len(chains) and not others:
        return [f"delete table {family} {XT_TABLE}"]
    return [f"delete chain {family} {XT_TABLE} {name}" for name in idle]


def _tagged_rules(binary: str, table: str) -> list[tuple[str, list[str]]]:
    """Our rules in `table`'s XT_CHAINS, as (chain, the rule as `-S` prints it, to be passed
    to `-D`): one listing of the whole table."""
    listing = subprocess.run([binary, "-w", "-t", table, "-S"], capture_output=True,
                             text=True, check=False)
    if listing.returncode != 0:
        return []
    rules = []
    for line in listing.stdout.splitlines():
        if f'--comment "{XT_COMMENT}"' not in line:
            continue
        words = shlex.split(line)
        if len(words) > 2 and words[0] == "-A" and words[1] in XT_CHAINS:
            rules.append((words[1], words[2:]))
    return rules
