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

# Link-local control traffic that conntrack does not track: checked in link_control.
_MLD = "mld-listener-report, mld-listener-done, mld2-listener-report"
_LINK_CONTROL_V6 = ("nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
                    f"nd-neighbor-advert, {_MLD}")
_KEEP_USER_BITS = f"0x{~marks.MASK & 0xFFFFFFFF:08x}"

# The ruleset's named counters, nft name -> what it counts. The metrics export each as
# nfguard_<name>_total, read from the kernel when scraped (`kernel_counters`).
COUNTERS = {
    "untracked_dropped": "Packets without a conntrack entry (invalid or untracked: raw "
    "sockets, malformed headers) dropped on the egress paths",
    "verdicts_without_conntrack": "Packets the engine gave a verdict that no conntrack entry "
    "could keep, dropped",
    "pending_replies_dropped": "Replies to flows waiting for a name that carried more than "
    "a bare TCP segment (payload, options), dropped",
    "link_control_dropped": "Neighbour discovery, MLD and IGMP packets out of their "
    "protocol's shape or over the report rate, dropped",
    "forged_answers_dropped": "DNS answers whose source is not reachable through the "
    "interface they came in on (forged over loopback or another link), dropped",
    "spoofed_sources_dropped": "Packets from engine.forward_from's interfaces whose source "
    "address is not routed back through the interface they came in on (a client claiming "
    "another's address), dropped",
    "dns_answers_over_limit": "DNS answers over the rate per socket (forwarded: per client "
    "address), dropped before the queue",
    "dns_queries_over_limit": "DNS queries over the rate per sending socket, dropped before "
    "the queue",
    "new_flows_over_limit": "New flows over the rate per user (forwarded: per source "
    "address), dropped before the queue",
    "fail_open_passed": "Queued packets that got no verdict (no engine bound, or the queue "
    "full) and passed because engine.fail is open",
    "fail_closed_dropped": "Packets marked for the queue that came back without a verdict "
    "(the queue rule missing) and were dropped because engine.fail is closed",
}

# Rates metered before the queue, (per second, burst); why these numbers: the ruleset's
# comments. New flows per user: engine.new_flows_per_user, its burst twice that.
ANSWERS_PER_SOCKET = (200, 400)
QUERIES_PER_SOCKET = (200, 400)
ANSWERS_PER_FORWARDED_CLIENT = (500, 1000)
MEMBERSHIP_REPORTS = (10, 50)
_METER_TIMEOUT = "1m"
_METER_SIZE = 65536
# TCP options of a bare segment as the kernel sends them after the handshake: none, or
# NOP, NOP, Timestamp (kind 8, length 10). SACK blocks only follow data received out of
# order, and a pending flow receives no data (see pending_reply), so they never qualify.
_TIMESTAMP_OPTION = "0x0101080a"


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


def render(settings: EngineConfig, path: str, queries: bool = True) -> Ruleset:
    """The whole ruleset for one queue path; `nft/` in the repository holds rendered copies.
    `queries`: whether DNS queries are judged (false only when [names] queries is "any" and
    no client overrides it: then they are not queued at all)."""
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
    queued = f"0x{marks.QUEUED:08x}"
    injected = f"0x{marks.INJECTED:08x}"
    mask = f"0x{marks.MASK:08x}"
    # A refusal has one shape: UDP from port 53 to the query's sender, on this host (over
    # lo) or behind forward_from. The mark alone proves nothing: SO_MARK takes only
    # CAP_NET_RAW (Linux 5.17+), so a packet of any other shape that carries it goes on to
    # the untracked drop (the raw-priority chain took its conntrack entry).
    refusal_to = ", ".join(f'"{name}"' for name in ("lo", *settings.forward_from))
    refusal = f"meta mark & {mask} == {injected} udp sport 53 oifname {{ {refusal_to} }}"
    # Before the reply shortcut: a query is never let out as the "reply" of a flow someone
    # else (an inbound packet, a forged one) started from port 53.
    query_jump = ("\t\tmeta l4proto { tcp, udp } th dport 53 jump dns_query\t# every DNS query, "
                  "whatever its flow or direction\n" if queries else "")
    local_query = ('\t\toifname "lo" meta l4proto { tcp, udp } th dport '
                   "53 jump dns_query\t# to a local stub resolver\n"
                   if queries and not settings.filter_loopback else "")
    if bypass:
        unanswered = (
            "\t\t# Fail open: while no engine is bound, and whenever the queue is full (a\n"
            "\t\t# flood, an engine that fell behind), the kernel lets what it would queue\n"
            "\t\t# pass unjudged, flows the policy denies included. Counted:\n"
            "\t\t# nfguard_fail_open_passed_total.\n"
            f"\t\tmeta mark & {queued} != 0 counter name fail_open_passed meta mark set "
            f"meta mark & {_KEEP_USER_BITS} accept")
    else:
        unanswered = (
            f"\t\tmeta mark & {queued} != 0 counter name fail_closed_dropped drop"
            "\t# fail closed: marked for the queue but no verdict came back")
    verdict_bits = f"0x{marks.MASK:08x}"
    ct_field = f"0x{marks.VERDICT_MASK:08x}"
    pending = f"0x{marks.PENDING:08x}"
    dns_where = "queued to the engine" + (
        f" (by the xt rule in iptables' {XT_TABLE} INPUT)" if path == XT else "")
    keep = _KEEP_USER_BITS
    answer = f"0x{marks.ANSWER:08x}"
    lan_query, lan_query_verdict = _lan_queries(settings.forward_from, queries)
    nft = f"""\
# nfguard egress ruleset (engine mode {settings.mode}, fail {settings.fail}, queue {queues}).
# Rendered by `nfguard install`; nfguard owns this table and nothing else.
# Verdicts live in the ct mark under {ct_field}: allow 0x{marks.ALLOW:08x}, deny 0x{marks.DENY:08x},
# pending {pending} (the decision waits for the name the client presents).
table inet {TABLE} {{
{_objects(settings.new_flows_per_user)}
\t# The engine's refusals of DNS queries are not tracked: as a conntrack entry, a refusal
\t# (from the server's port 53 to the client's port) would make the client's next query
\t# on that socket a "reply", which no rule judges.
\tchain refusals {{
\t\ttype filter hook output priority raw; policy accept;
\t\tmeta mark & {mask} == {injected} notrack
\t}}

\t# Locally generated packets. A packet without a conntrack entry (a raw socket's
\t# malformed headers, SYN+FIN, a UDP length that lies) fails every ct match, so it is
\t# dropped before anything could accept it; link-local control traffic is not tracked
\t# and is checked on its own first.
\tchain output {{
\t\ttype filter hook output priority filter - 10; policy accept;
\t\t{refusal} accept\t# the engine's refusal of a DNS query, to its client
{local_query}{loopback}\t\ticmpv6 type {{ {_LINK_CONTROL_V6} }} jump link_control
\t\tip protocol igmp jump link_control
\t\tct state invalid,untracked counter name untracked_dropped drop\t# no conntrack entry: no verdict could hold it
{query_jump}\t\tct direction reply accept\t# replies to flows others started; the resets and ICMP errors of our own cuts
{_meter_new_flows(settings.new_flows_per_user)}\t\tjump egress
\t}}
{_forward_chain(settings.forward_from, dns_queue, settings.new_flows_per_user, queries)}
\t# A flow's packets. Decided flows never leave the kernel; new ones are marked {queued}
\t# and handed to the engine, and so are the packets of pending flows (marked
\t# 0x{marks.QUEUED | marks.PENDING:08x}) until the engine has seen the name.
\tchain egress {{
\t\tct mark & {ct_field} == 0x{marks.DENY:08x} jump cut\t# decided: denied
\t\tct mark & {ct_field} == 0x{marks.ALLOW:08x} accept\t# decided: allowed
\t\tct mark & {ct_field} == {pending} meta l4proto tcp jump bare\t# pending, a segment that carries nothing
\t\tct mark & {ct_field} == {pending} meta mark set meta mark | {pending}\t# pending: to the engine again
\t\tct mark & {ct_field} != {pending} ct state established,related accept\t# flows that predate nfguard, ICMP errors
\t\tgoto to_engine
\t}}

\tchain to_engine {{
\t\tmeta mark set meta mark | {queued}
{queue_step}
\t}}

\t# A DNS query (a datagram, or a TCP segment that carries bytes) goes to the engine,
\t# which reads its question and judges the name by the sender's policy; the handshake
\t# takes a flow's usual path, bare segments pass.
\tchain dns_query {{
\t\tct mark & {ct_field} == 0x{marks.DENY:08x} jump cut\t# a denied flow stays cut
{_meter_queries()}
\t\tmeta l4proto udp goto to_engine
\t\ttcp flags & (syn | rst) != 0 goto dns_handshake
\t\tjump bare
\t\tgoto to_engine
\t}}

\t# A SYN or RST to a DNS server that carries nothing takes its flow's usual path (back
\t# where dns_query was jumped from: over loopback, to a local stub, that is no path at
\t# all); one that carries bytes (TCP Fast Open data, which a stub taking Fast Open reads)
\t# goes to the engine, which drops it.
\tchain dns_handshake {{
{_handshake_rules("return")}
\t\tgoto to_engine
\t}}

\t# TCP segments of a pending flow that carry nothing (the handshake's ACK, window
\t# updates, FIN, RST) pass here instead of costing a trip through the queue each; the
\t# server's replies to a pending flow pass only in this shape too. Nothing means: no
\t# payload, no IPv4 options or IPv6 extension headers, no urgent data, no reserved
\t# bits, and TCP options only as the kernel sends them after a handshake (none, or
\t# NOP, NOP, Timestamp; SACK blocks follow received data, which a pending flow gets
\t# none of). Anything else returns: to the engine, or, for a reply, to the drop.
\tchain bare {{
\t\ttcp flags & (syn | urg) != 0 return
\t\ttcp urgptr != 0 return
\t\t@th,100,3 != 0 return
{_bare_tcp_rules()}
\t}}

\t# After the engine and the host's own iptables: the verdict comes back as mark bits.
\tchain verdict {{
\t\ttype filter hook output priority {VERDICT_PRIORITY}; policy accept;
\t\tjump settle
\t}}

\t# A flow's verdict: keep it in the ct mark (user bits outside {verdict_bits} are
\t# preserved) and clear the packet bits again. Reading the ct mark fails without a
\t# conntrack entry: a denied packet is cut all the same, and nothing the engine saw
\t# passes unless its verdict was kept.
\tchain settle {{
\t\tmeta mark & {mask} == {injected} accept\t# the engine's refusal, on its way to the client
\t\tmeta mark & {verdict_bits} == 0x{marks.ALLOW:08x} ct mark set ct mark & {keep} | 0x{marks.ALLOW:08x} meta mark set meta mark & {keep} accept
\t\tmeta mark & {verdict_bits} == {pending} ct mark set ct mark & {keep} | {pending} meta mark set meta mark & {keep} accept
\t\tmeta mark & {verdict_bits} == 0x{marks.DENY:08x} ct mark set ct mark & {keep} | 0x{marks.DENY:08x}\t# the flow's later packets are cut in egress
\t\tmeta mark & {verdict_bits} == 0x{marks.DENY:08x} meta mark set meta mark & {keep} jump cut\t# this packet, with a conntrack entry or not
{unanswered}
\t\tmeta mark & {verdict_bits} != 0 counter name verdicts_without_conntrack drop\t# a verdict no ct mark could keep
\t}}

\t# DNS answers, on every interface (loopback too: a local stub resolver answers there),
\t# are {dns_where} so it learns their names before the client can use them.
\t# Only replies to queries this host sent: an unsolicited "answer" teaches nothing.
\t# First, a flow waiting for its name gets nothing of the server's but bare segments.
\tchain input {{
\t\ttype filter hook input priority filter - 10; policy accept;
\t\tmeta mark & {mask} == {injected} udp sport 53 iifname "lo" meta mark set meta mark & {keep} accept\t# the engine's refusal of a query (no answer to learn)
{lan_query}\t\tct direction reply ct mark & {ct_field} == {pending} jump pending_reply
\t\ttcp sport 53 ct direction reply ct mark & {ct_field} == 0x{marks.DENY:08x} tcp flags & rst == rst accept\t# the reset of a cut DNS stream (a refused query): nothing to learn
\t\tmeta l4proto {{ tcp, udp }} th sport 53 ct direction reply jump answer
\t\tudp sport 53 ct direction reply meta mark set meta mark | {answer}{dns_queue}
\t\ttcp sport 53 ct direction reply meta mark set meta mark | {answer}{dns_queue}
\t}}

\tchain input_verdict {{
\t\ttype filter hook input priority {VERDICT_PRIORITY}; policy accept;
{lan_query_verdict}\t\tjump settle_answer
\t}}

\t# The engine accepts every answer (after learning it) or drops an out-of-order TCP
\t# segment; the ct mark is not touched here.
\tchain settle_answer {{
\t\tmeta mark & {verdict_bits} == 0x{marks.ALLOW:08x} meta mark set meta mark & {keep} accept
\t\tmeta mark & {verdict_bits} == 0x{marks.DENY:08x} drop
{unanswered}
\t}}

\t# The server's side of a flow that still waits for its name (say a server-first
\t# protocol pushing "run this" before the client presented any name): only what the
\t# handshake needs reaches the client, the rest waits for the verdict (TCP resends it).
\t# ICMP errors about a UDP flow are dropped too: a socket with IP_RECVERR reads the
\t# datagram an error quotes, which the server writes.
\tchain pending_reply {{
\t\tmeta l4proto {{ icmp, ipv6-icmp }} ct protocol tcp accept\t# errors about a TCP flow (path MTU): TCP shows no quoted bytes
\t\ttcp flags & (syn | ack | fin | rst | urg) == syn | ack tcp urgptr 0 jump bare_handshake
\t\tmeta l4proto tcp jump bare
\t\tcounter name pending_replies_dropped drop
\t}}

\t# The server's SYN-ACK: the handshake's options (MSS, SACK permitted, timestamps,
\t# window scale), but no payload (TCP Fast Open data) and no IPv4 options or IPv6
\t# extension headers.
\tchain bare_handshake {{
{_handshake_rules("accept")}
\t}}

{_answer_chain()}
{_link_control_chain()}
\t# A denied flow is cut so the client fails at once instead of retrying.
\tchain cut {{
\t\tmeta l4proto tcp reject with tcp reset
\t\treject with icmpx admin-prohibited
\t}}
}}
"""  # noqa: E501
    xt_rules = _xt_rules(settings, bypass) if path == XT else ()
    return Ruleset(path, nft, xt_rules)


def _objects(new_flows: int) -> str:
    """The named counters, and the sets that meter new flows and DNS answers per key
    (dynamic: an entry per key seen, gone after a minute unused)."""
    if new_flows:
        flows_note = f"""\
\t# - New flows: {new_flows}/s per user (burst {2 * new_flows}; engine.new_flows_per_user), per
\t#   source address for forwarded flows. At a fifth of what one worker decides, it
\t#   takes five users flooding at once to fill the queue. Over the rate the packet is
\t#   dropped, not refused: a TCP sender retries its SYN a second later; others' flows
\t#   are untouched."""
    else:
        flows_note = "\t# - New flows: not metered (engine.new_flows_per_user = 0)."
    counters = "\n".join(f"\tcounter {name} {{ }}" for name in COUNTERS)
    sets = "\n".join(
        f"\tset {name} {{ type {key}; flags dynamic; timeout {_METER_TIMEOUT}; "
        f"size {_METER_SIZE}; }}"
        for name, key in (("new_flows_per_user", "uid"),
                          ("new_flows_per_source4", "ipv4_addr"),
                          ("new_flows_per_source6", "ipv6_addr"),
                          ("answers_per_socket4", "ipv4_addr . inet_service"),
                          ("answers_per_socket6", "ipv6_addr . inet_service"),
                          ("answers_per_client4", "ipv4_addr"),
                          ("answers_per_client6", "ipv6_addr"),
                          ("queries_per_socket4", "ipv4_addr . inet_service"),
                          ("queries_per_socket6", "ipv6_addr . inet_service")))
    return f"""\
\t# Counted in the kernel, exported as nfguard_<name>_total.
{counters}

\t# Meters in front of the queue, so a flood of one user, socket or container cannot
\t# fill it for the others. The engine decides some 10,000-15,000 new flows a second
\t# (DESIGN.md's benchmark), and a DNS answer of 140 records costs it ~0.5 ms.
{flows_note}
\t# - DNS answers: {ANSWERS_PER_SOCKET[0]}/s per socket they go to (burst {ANSWERS_PER_SOCKET[1]}), a tenth of a core at
\t#   worst. Resolvers use a socket per query (glibc, systemd-resolved), so a lookup
\t#   never comes near it, and a process that opens many sockets is held by its user's
\t#   new-flow rate. Forwarded answers: {ANSWERS_PER_FORWARDED_CLIENT[0]}/s per client address (burst {ANSWERS_PER_FORWARDED_CLIENT[1]}), as
\t#   a container or VM resolves over many sockets. Over the rate an answer is dropped
\t#   before the engine sees it: only that socket's lookup waits and retries, also with
\t#   fail closed; nobody else's answers are delayed.
\t# - DNS queries: {QUERIES_PER_SOCKET[0]}/s per sending socket (burst {QUERIES_PER_SOCKET[1]}): each is judged, and a
\t#   tunnel sends thousands on one socket; a lookup sends one or two per socket.
{sets}
"""  # noqa: E501


def _meter_new_flows(rate: int) -> str:
    """The output hook's meter of new flows per user (none at rate 0)."""
    if not rate:
        return ""
    return (f"\t\tct state new update @new_flows_per_user {{ meta skuid limit rate over "
            f"{rate}/second burst {2 * rate} packets }} counter name new_flows_over_limit "
            "drop\n")


def _meter_queries() -> str:
    """DNS queries metered per sending socket before the queue."""
    rate, burst = QUERIES_PER_SOCKET
    return "\n".join(
        f"\t\tmeta nfproto {family} update @queries_per_socket{n} {{ {field} saddr . th sport "
        f"limit rate over {rate}/second burst {burst} packets }} counter name "
        "dns_queries_over_limit drop"
        for family, n, field in (("ipv4", 4, "ip"), ("ipv6", 6, "ip6")))


def _answer_chain() -> str:
    """DNS answers to this host: believed only from the interface their sender is
    reached through, and metered per socket."""
    rate, burst = ANSWERS_PER_SOCKET
    meters = "\n".join(
        f"\t\tmeta nfproto {family} update @answers_per_socket{n} {{ {field} daddr . th dport "
        f"limit rate over {rate}/second burst {burst} packets }} counter name "
        "dns_answers_over_limit drop"
        for family, n, field in (("ipv4", 4, "ip"), ("ipv6", 6, "ip6")))
    return f"""\
\t# A DNS answer is believed only from the interface its sender is reached through: on
\t# loopback only from this host's own addresses (a raw socket can send a "reply" from
\t# the resolver's address to a local port over lo), elsewhere as strict reverse-path
\t# filtering checks it.
\tchain answer {{
\t\tiifname "lo" fib saddr type != local counter name forged_answers_dropped drop
\t\tiifname != "lo" fib saddr . iif oif missing counter name forged_answers_dropped drop
{meters}
\t}}
"""


def _link_control_chain() -> str:
    """Neighbour discovery, MLD and IGMP: not tracked by conntrack, so they cannot take the
    flow path; each passes only in the shape its protocol has."""
    reports, burst = MEMBERSHIP_REPORTS
    return f"""\
\t# IPv6 neighbour discovery (RFC 4861) and multicast membership (MLD, and IGMP for
\t# IPv4), which conntrack does not track: each only as its protocol needs it.
\t# - Neighbour discovery: hop limit 255 (never routed), no extension headers, and
\t#   no more than the kernel sends: the fixed part and one link-layer address option
\t#   (8 bytes, Ethernet). Solicitations only to link-local or solicited-node
\t#   addresses, router solicitations to all-routers, router advertisements (a host
\t#   that serves its bridges) from link-local to link-scoped addresses. Advertisements
\t#   answer whoever solicited, so their destination stays open.
\t# - Membership reports carry group addresses, which a process chooses: hop limit 1
\t#   (TTL 1), from a link-local (or the unspecified) address to a multicast one, and
\t#   {reports}/s (burst {burst}) for each family; the kernel repeats a lost report.
\tchain link_control {{
\t\ticmpv6 type nd-neighbor-solicit ip6 hoplimit 255 ip6 nexthdr ipv6-icmp ip6 length {{ 24, 32 }} ip6 daddr {{ fe80::/10, ff02::1:ff00:0/104 }} accept
\t\ticmpv6 type nd-neighbor-advert ip6 hoplimit 255 ip6 nexthdr ipv6-icmp ip6 length {{ 24, 32 }} accept
\t\ticmpv6 type nd-router-solicit ip6 hoplimit 255 ip6 nexthdr ipv6-icmp ip6 length {{ 8, 16 }} ip6 daddr ff02::2 accept
\t\ticmpv6 type nd-router-advert ip6 hoplimit 255 ip6 nexthdr ipv6-icmp ip6 saddr fe80::/10 ip6 daddr {{ fe80::/10, ff02::1 }} accept
\t\ticmpv6 type {{ {_MLD} }} ip6 hoplimit 1 ip6 saddr {{ ::, fe80::/10 }} ip6 daddr ff00::/8 limit rate {reports}/second burst {burst} packets accept
\t\tip protocol igmp ip ttl 1 ip hdrlength {{ 5, 6 }} ip daddr 224.0.0.0/4 limit rate {reports}/second burst {burst} packets accept
\t\tcounter name link_control_dropped drop
\t}}
"""  # noqa: E501


def _lan_queries(interfaces: tuple[str, ...], queries: bool) -> tuple[str, str]:
    """The input chain's rule for DNS queries from engine.forward_from's interfaces to a
    resolver on this host (a gateway's dnsmasq, which recurses for them), and its verdict
    rule: judged by the sender's policy like a forwarded query, or its name would leave
    through the resolver unjudged. A refused TCP stream is cut as on output."""
    if not interfaces or not queries:
        return "", ""
    names = "{ " + ", ".join(f'"{name}"' for name in interfaces) + " }"
    mask = f"0x{marks.MASK:08x}"
    return (f"\t\tiifname {names} meta l4proto {{ tcp, udp }} th dport 53 ct direction "
            "original jump dns_query\t# to a resolver on this host, from forwarded clients\n",
            f"\t\tct direction original meta mark & {mask} != 0 jump settle\t# such a "
            "query\n")


def _forward_chain(interfaces: tuple[str, ...], dns_queue: str, new_flows: int,
                   queries: bool) -> str:
    """The forward hook's chains, for flows from engine.forward_from's interfaces (none:
    forwarded traffic is left alone). Their new flows go through `egress` like the host's
    own, in their original direction (what comes from them in the reply direction answers
    connections made into them); their packets without a conntrack entry are dropped first,
    and so are those whose source address is not routed back through the interface they
    came in on (strict reverse path: a client's address is what selects its policy, by
    match.source); their pending flows get only bare replies. DNS answers on their way to
    those interfaces are learnt first, marked ANSWER so the engine tells them from flows (sport
    53 alone is the sender's choice)."""
    if not interfaces:
        return ""
    names = "{ " + ", ".join(f'"{name}"' for name in interfaces) + " }"
    answer = f"0x{marks.ANSWER:08x}"
    query = (f"\t\tiifname {names} meta l4proto {{ tcp, udp }} th dport 53 jump dns_query\t# "
             "every DNS query of theirs\n" if queries else "")
    ct_field, pending = f"0x{marks.VERDICT_MASK:08x}", f"0x{marks.PENDING:08x}"
    answers, answers_burst = ANSWERS_PER_FORWARDED_CLIENT
    meters = "".join(
        f"\t\tct state new iifname {names} update @new_flows_per_source{n} {{ {field} saddr "
        f"limit rate over {new_flows}/second burst {2 * new_flows} packets }} counter name "
        f"new_flows_over_limit drop\n" for n, field in ((4, "ip"), (6, "ip6")) if new_flows)
    answer_meters = "\n".join(
        f"\t\tmeta nfproto {family} update @answers_per_client{n} {{ {field} daddr limit rate "
        f"over {answers}/second burst {answers_burst} packets }} counter name "
        "dns_answers_over_limit drop"
        for family, n, field in (("ipv4", 4, "ip"), ("ipv6", 6, "ip6")))
    return f"""
\t# Forwarded packets of containers and VMs behind {names}
\t# (engine.forward_from): their flows are this host's egress too.
\tchain forward {{
\t\ttype filter hook forward priority filter - 10; policy accept;
\t\tiifname {names} ct state invalid,untracked counter name untracked_dropped drop\t# a container's raw socket (CAP_NET_RAW)
\t\tiifname {names} fib saddr . iif oif missing counter name spoofed_sources_dropped drop\t# a source not routed back where it came in: another's address (match.source)
{query}\t\tct direction reply oifname {names} ct mark & {ct_field} == {pending} jump pending_reply
\t\tmeta l4proto {{ tcp, udp }} th sport 53 ct direction reply oifname {names} jump forwarded_answer
\t\tudp sport 53 ct direction reply oifname {names} meta mark set meta mark | {answer}{dns_queue}
\t\ttcp sport 53 ct direction reply oifname {names} meta mark set meta mark | {answer}{dns_queue}
{meters}\t\tct direction original iifname {names} jump egress
\t}}

\tchain forward_verdict {{
\t\ttype filter hook forward priority {VERDICT_PRIORITY}; policy accept;
\t\tct direction reply jump settle_answer
\t\tjump settle
\t}}

\t# DNS answers to a container: from where their sender is reached, metered per client.
\tchain forwarded_answer {{
\t\tfib saddr . iif oif missing counter name forged_answers_dropped drop
{answer_meters}
\t}}
"""  # noqa: E501


def _xt_rules(settings: EngineConfig, bypass: bool) -> tuple[XtRule, ...]:
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


def _bare_tcp_rules() -> str:
    """A segment that ends with its TCP header (the IP length says so), with no options or
    with the kernel's timestamp, per family."""
    return "\n".join((
        "\t\tip hdrlength 5 ip length 40 tcp doff 5 accept",
        f"\t\tip hdrlength 5 ip length 52 tcp doff 8 @th,160,32 {_TIMESTAMP_OPTION} accept",
        "\t\tip6 nexthdr tcp ip6 length 20 tcp doff 5 accept",
        f"\t\tip6 nexthdr tcp ip6 length 32 tcp doff 8 @th,160,32 {_TIMESTAMP_OPTION} accept"))


def _handshake_rules(verdict: str) -> str:
    """One rule per TCP header length (data offset 5-15 words, the common 10 first): the IP
    length says the segment ends with its TCP header (no payload, no IPv4 options or IPv6
    extension headers), and `verdict` applies. nft compares a field with a constant, not
    with another field, hence the list."""
    offsets = (10, *(d for d in range(5, 16) if d != 10))
    v4 = [f"\t\tip hdrlength 5 ip length {20 + 4 * d} tcp doff {d} {verdict}" for d in offsets]
    v6 = [f"\t\tip6 nexthdr tcp ip6 length {4 * d} tcp doff {d} {verdict}" for d in offsets]
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


def parse_counters(listing: dict) -> dict[str, int]:
    """Packets per named counter of our table, from `nft -j list counters table inet
    nfguard`; what is not ours or not a counter is skipped."""
    found = {}
    for item in listing.get("nftables", []):
        counter = item.get("counter") if isinstance(item, dict) else None
        if (isinstance(counter, dict) and counter.get("table") == TABLE
                and counter.get("name") in COUNTERS
                and isinstance(counter.get("packets"), int)):
            found[counter["name"]] = counter["packets"]
    return found


class CounterReader:
    """Reads the ruleset's counters from the kernel, for the metrics at scrape time (one
    netlink dump; nothing when the table is not there)."""

    def __init__(self) -> None:
        import nftables

        self._nft = nftables.Nftables()

    def __call__(self) -> dict[str, int]:
        rc, listing, _err = self._nft.json_cmd({"nftables": [
            {"list": {"counters": {"family": "inet", "table": TABLE}}}]})
        return parse_counters(listing) if rc == 0 and isinstance(listing, dict) else {}


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
