"""nfguard's ruleset as text for `nft -f`, rendered from the engine's config (pure): the
hook chains a flow, a DNS query and a DNS answer take, assembled with the parts the
package's other modules render; on the xt path, with its queue rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfguard import marks
from nfguard.config import EngineConfig
from nfguard.nft import (
    NATIVE,
    PATH_DESCRIPTIONS,
    TABLE,
    VERDICT_PRIORITY,
    XT,
    counters,
    forward,
    meters,
    onetrip,
    shapes,
    xt,
)


@dataclass(frozen=True, slots=True)
class Ruleset:
    """What `nfguard install` loads: the table, and on the xt path the queue rules."""

    path: str  # NATIVE | XT
    nft: str  # text for `nft -f`
    xt_rules: tuple[xt.XtRule, ...]

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
                      f"{xt.XT_TABLE} table")
        dns_queue = ""
    loopback = (
        "" if settings.filter_loopback
        else '\t\toifname "lo" accept\t# loopback is not filtered (engine.filter_loopback)\n'
    )
    queued = f"0x{marks.QUEUED:08x}"
    injected = f"0x{marks.INJECTED:08x}"
    mask = f"0x{marks.MASK:08x}"
    keep = f"0x{marks.USER_BITS:08x}"
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
            f"meta mark & {keep} accept")
    else:
        unanswered = (
            f"\t\tmeta mark & {queued} != 0 counter name fail_closed_dropped drop"
            "\t# fail closed: marked for the queue but no verdict came back")
    verdict_bits = f"0x{marks.MASK:08x}"
    ct_field = f"0x{marks.VERDICT_MASK:08x}"
    pending = f"0x{marks.PENDING:08x}"
    dns_where = "queued to the engine" + (
        f" (by the xt rule in iptables' {xt.XT_TABLE} INPUT)" if path == XT else "")
    answer = f"0x{marks.ANSWER:08x}"
    lan_query, lan_query_verdict = forward.lan_queries(settings.forward_from, queries)
    nft = f"""\
# nfguard egress ruleset (engine mode {settings.mode}, fail {settings.fail}, queue {queues}).
# Rendered by `nfguard install`; nfguard owns this table and nothing else.
# Verdicts live in the ct mark under {ct_field}: allow 0x{marks.ALLOW:08x}, deny 0x{marks.DENY:08x},
# pending {pending} (the decision waits for the name the client presents).
table inet {TABLE} {{
{counters.declarations()}

{meters.declarations(settings.new_flows_per_user)}

{onetrip.declarations()}

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
{local_query}{loopback}\t\ticmpv6 type {{ {shapes.LINK_CONTROL_V6} }} jump link_control
\t\tip protocol igmp jump link_control
\t\tct state invalid,untracked counter name untracked_dropped drop\t# no conntrack entry: no verdict could hold it
{query_jump}\t\tct direction reply accept\t# replies to flows others started; the resets and ICMP errors of our own cuts
{meters.new_flows_per_user(settings.new_flows_per_user)}\t\tct state new ct mark & {ct_field} == 0 meta l4proto tcp jump one_trip\t# a SYN to where a name may allow: pending at once
\t\tjump egress
\t}}
{onetrip.chains()}{forward.chains(settings.forward_from, dns_queue, settings.new_flows_per_user, queries)}
\t# A flow's packets. Decided flows never leave the kernel; new ones are marked {queued}
\t# and handed to the engine, and so are the packets of pending flows (marked
\t# 0x{marks.QUEUED | marks.PENDING:08x}) until the engine has seen the name.
\tchain egress {{
\t\tct mark & {ct_field} == 0x{marks.DENY:08x} jump cut\t# decided: denied
\t\tct mark & {ct_field} == 0x{marks.ALLOW:08x} accept\t# decided: allowed
\t\tct mark & {ct_field} == {pending} meta l4proto tcp jump bare\t# pending, a segment that carries nothing
\t\tct mark & {mask} == 0x{marks.KERNEL_PENDING:08x} ct mark set ct mark & 0x{~marks.QUEUED & 0xFFFFFFFF:08x} meta mark set meta mark | 0x{marks.UNSEEN & ~marks.QUEUED:08x} goto to_engine\t# made pending at its SYN: the engine's first sight
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
{meters.queries_per_socket()}
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
{shapes.handshake_rules("return")}
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
{shapes.bare_tcp_rules()}
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
\t\tct direction reply ct mark & {ct_field} == 0x{marks.DENY:08x} meta l4proto tcp jump pending_reply\t# a cut flow's server: no bytes either
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
{shapes.handshake_rules("accept")}
\t}}

{_answer_chain()}
{shapes.link_control_chain()}
\t# A denied flow is cut so the client fails at once instead of retrying.
\tchain cut {{
\t\tmeta l4proto tcp reject with tcp reset
\t\treject with icmpx admin-prohibited
\t}}
}}
"""  # noqa: E501
    xt_rules = xt.queue_rules(settings, bypass) if path == XT else ()
    return Ruleset(path, nft, xt_rules)


def _answer_chain() -> str:
    """DNS answers to this host: believed only from the interface their sender is
    reached through, and metered per socket."""
    return f"""\
\t# A DNS answer is believed only from the interface its sender is reached through: on
\t# loopback only from this host's own addresses (a raw socket can send a "reply" from
\t# the resolver's address to a local port over lo), elsewhere as strict reverse-path
\t# filtering checks it.
\tchain answer {{
\t\tiifname "lo" fib saddr type != local counter name forged_answers_dropped drop
\t\tiifname != "lo" fib saddr . iif oif missing counter name forged_answers_dropped drop
{meters.answers_per_socket()}
\t}}
"""
