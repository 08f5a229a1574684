"""The chains for the containers and VMs behind engine.forward_from's interfaces: their
flows are this host's egress too, and take the same path; their DNS answers are learnt,
and their queries to a resolver on this host judged, as the host's own.
"""

from __future__ import annotations

from nfguard import marks
from nfguard.nft import VERDICT_PRIORITY, meters


def chains(interfaces: tuple[str, ...], dns_queue: str, new_flows: int,
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
    names = _set_of(interfaces)
    answer = f"0x{marks.ANSWER:08x}"
    query = (f"\t\tiifname {names} meta l4proto {{ tcp, udp }} th dport 53 jump dns_query\t# "
             "every DNS query of theirs\n" if queries else "")
    ct_field, pending = f"0x{marks.VERDICT_MASK:08x}", f"0x{marks.PENDING:08x}"
    return f"""
\t# Forwarded packets of containers and VMs behind {names}
\t# (engine.forward_from): their flows are this host's egress too.
\tchain forward {{
\t\ttype filter hook forward priority filter - 10; policy accept;
\t\tiifname {names} ct state invalid,untracked counter name untracked_dropped drop\t# a container's raw socket (CAP_NET_RAW)
\t\tiifname {names} fib saddr . iif oif missing counter name spoofed_sources_dropped drop\t# a source not routed back where it came in: another's address (match.source)
{query}\t\tct direction reply oifname {names} ct mark & {ct_field} == {pending} jump pending_reply
\t\tct direction reply oifname {names} ct mark & {ct_field} == 0x{marks.DENY:08x} meta l4proto tcp jump pending_reply
\t\tmeta l4proto {{ tcp, udp }} th sport 53 ct direction reply oifname {names} jump forwarded_answer
\t\tudp sport 53 ct direction reply oifname {names} meta mark set meta mark | {answer}{dns_queue}
\t\ttcp sport 53 ct direction reply oifname {names} meta mark set meta mark | {answer}{dns_queue}
{meters.new_flows_per_source(names, new_flows)}\t\tct direction original iifname {names} jump egress
\t}}

\tchain forward_verdict {{
\t\ttype filter hook forward priority {VERDICT_PRIORITY}; policy accept;
\t\tct direction reply jump settle_answer
\t\tjump settle
\t}}

\t# DNS answers to a container: from where their sender is reached, metered per client.
\tchain forwarded_answer {{
\t\tfib saddr . iif oif missing counter name forged_answers_dropped drop
{meters.answers_per_client()}
\t}}
"""  # noqa: E501


def lan_queries(interfaces: tuple[str, ...], queries: bool) -> tuple[str, str]:
    """The input chain's rule for DNS queries from engine.forward_from's interfaces to a
    resolver on this host (a gateway's dnsmasq, which recurses for them), and its verdict
    rule: judged by the sender's policy like a forwarded query, or its name would leave
    through the resolver unjudged. A refused TCP stream is cut as on output."""
    if not interfaces or not queries:
        return "", ""
    names = _set_of(interfaces)
    mask = f"0x{marks.MASK:08x}"
    return (f"\t\tiifname {names} meta l4proto {{ tcp, udp }} th dport 53 ct direction "
            "original jump dns_query\t# to a resolver on this host, from forwarded clients\n",
            f"\t\tct direction original meta mark & {mask} != 0 jump settle\t# such a "
            "query\n")


def _set_of(interfaces: tuple[str, ...]) -> str:
    """The interface names as an nft anonymous set."""
    return "{ " + ", ".join(f'"{name}"' for name in interfaces) + " }"
