"""The shapes in which packets pass in the kernel, without the engine, stated to the byte:
TCP segments that carry nothing (a pending flow's, a DNS handshake, a server's SYN-ACK)
and link-local control traffic, which conntrack does not track.
"""

from __future__ import annotations

# Link-local control traffic that conntrack does not track: checked in link_control.
_MLD = "mld-listener-report, mld-listener-done, mld2-listener-report"
LINK_CONTROL_V6 = ("nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
                   f"nd-neighbor-advert, {_MLD}")
# Membership reports, (per second, burst) for each family: the kernel repeats a lost one.
MEMBERSHIP_REPORTS = (10, 50)
# TCP options of a bare segment as the kernel sends them after the handshake: none, or
# NOP, NOP, Timestamp (kind 8, length 10). SACK blocks only follow data received out of
# order, and a pending flow receives no data (see pending_reply), so they never qualify.
_TIMESTAMP_OPTION = "0x0101080a"


def bare_tcp_rules() -> str:
    """A segment that ends with its TCP header (the IP length says so), with no options or
    with the kernel's timestamp, per family."""
    return "\n".join((
        "\t\tip hdrlength 5 ip length 40 tcp doff 5 accept",
        f"\t\tip hdrlength 5 ip length 52 tcp doff 8 @th,160,32 {_TIMESTAMP_OPTION} accept",
        "\t\tip6 nexthdr tcp ip6 length 20 tcp doff 5 accept",
        f"\t\tip6 nexthdr tcp ip6 length 32 tcp doff 8 @th,160,32 {_TIMESTAMP_OPTION} accept"))


def handshake_rules(verdict: str) -> str:
    """One rule per TCP header length (data offset 5-15 words, the common 10 first): the IP
    length says the segment ends with its TCP header (no payload, no IPv4 options or IPv6
    extension headers), and `verdict` applies. nft compares a field with a constant, not
    with another field, hence the list."""
    offsets = (10, *(d for d in range(5, 16) if d != 10))
    v4 = [f"\t\tip hdrlength 5 ip length {20 + 4 * d} tcp doff {d} {verdict}" for d in offsets]
    v6 = [f"\t\tip6 nexthdr tcp ip6 length {4 * d} tcp doff {d} {verdict}" for d in offsets]
    return "\n".join(v4 + v6)


def link_control_chain() -> str:
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
