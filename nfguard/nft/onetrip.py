"""The kernel's side of the one trip (nfguard.onetrip fills the sets): a new TCP flow to a
destination some name rule could allow is made pending at its SYN, in the kernel, so the
engine meets it first at the data segment that carries the name.
"""

from __future__ import annotations

from nfguard import marks

# The one-trip sets (nfguard.onetrip): name -> nft type. Their size bounds what the engine
# pushes; a destination left out costs its flow a second trip, never its verdict.
ONE_TRIP_SETS = {
    "onetrip4": "ipv4_addr . inet_service",
    "onetrip_any4": "ipv4_addr",
    "onetrip6": "ipv6_addr . inet_service",
    "onetrip_any6": "ipv6_addr",
}
ONE_TRIP_SET_SIZE = 262144


def declarations() -> str:
    """The one-trip sets, declared at the top of the table."""
    sets = "\n".join(
        f"\tset {name} {{ type {key}; flags timeout; size {ONE_TRIP_SET_SIZE}; }}"
        for name, key in ONE_TRIP_SETS.items())
    return f"""\
\t# Where a TCP flow may take one trip through the queue: the addresses (and ports) that
\t# some rule allows by a name those addresses were learnt for, each element as long as
\t# the name cache keeps the binding (nfguard.onetrip fills them; a reload rewrites them).
{sets}"""


def chains() -> str:
    """A new TCP flow to a destination in the one-trip sets: its SYN, if it carries
    nothing (no payload, no IP options, the kernel's own SYN options), passes as PENDING
    marked by the kernel (marks.KERNEL_PENDING), and the engine sees the flow first at its
    first data segment, where the client's policy judges the name it presents. Any other
    SYN goes on to the engine as before. DNS (port 53) keeps its own path."""
    pending = f"0x{marks.KERNEL_PENDING:08x}"
    lookups = "\n".join(
        f"\t\t{field} daddr{port} @{name} goto one_trip_syn"
        for name, field, port in (("onetrip4", "ip", " . tcp dport"),
                                  ("onetrip_any4", "ip", ""),
                                  ("onetrip6", "ip6", " . tcp dport"),
                                  ("onetrip_any6", "ip6", "")))
    # The kernel's SYN options with timestamps on: MSS, SACK permitted, timestamps (the
    # echo 0), NOP, window scale; or none. Others (Fast Open, MPTCP, MD5) go to the engine.
    syn_options = ("@th,160,16 0x0204 @th,192,32 0x0402080a @th,256,32 0 "
                   "@th,288,24 0x010303")
    settle = f"ct mark set ct mark & 0x{marks.USER_BITS:08x} | {pending} accept"
    return f"""
\t# A new TCP flow to where a name may allow it (see the sets above).
\tchain one_trip {{
\t\ttcp dport 53 return
{lookups}
\t}}

\t# Its SYN, if it carries nothing: pending from here, without the trip to the engine.
\tchain one_trip_syn {{
\t\ttcp flags & (fin | syn | rst | psh | ack | urg) != syn return
\t\ttcp urgptr != 0 return
\t\t@th,100,3 != 0 return
\t\tip hdrlength 5 ip length 40 tcp doff 5 {settle}
\t\tip hdrlength 5 ip length 60 tcp doff 10 {syn_options} {settle}
\t\tip6 nexthdr tcp ip6 length 20 tcp doff 5 {settle}
\t\tip6 nexthdr tcp ip6 length 40 tcp doff 10 {syn_options} {settle}
\t}}
"""
