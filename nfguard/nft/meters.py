"""The meters in front of the queue: rates per user, socket or client, over which packets
are dropped in the kernel, so a flood of one cannot fill the queue for the others.

Each meter is a dynamic set (an entry per key seen, gone after a minute unused), declared
with the ruleset's account of its numbers, and a rule per hook chain that updates it.
"""

from __future__ import annotations

# Rates metered before the queue, (per second, burst); why these numbers: the ruleset's
# comments. New flows per user: engine.new_flows_per_user, its burst twice that.
ANSWERS_PER_SOCKET = (200, 400)
QUERIES_PER_SOCKET = (200, 400)
ANSWERS_PER_FORWARDED_CLIENT = (500, 1000)
_METER_TIMEOUT = "1m"
_METER_SIZE = 65536


def declarations(new_flows: int) -> str:
    """The sets that meter new flows, DNS answers and queries per key, and why their rates
    are what they are."""
    if new_flows:
        flows_note = f"""\
\t# - New flows: {new_flows}/s per user (burst {2 * new_flows}; engine.new_flows_per_user), per
\t#   source address for forwarded flows. At a fifth of what one worker decides, it
\t#   takes five users flooding at once to fill the queue. Over the rate the packet is
\t#   dropped, not refused: a TCP sender retries its SYN a second later; others' flows
\t#   are untouched."""
    else:
        flows_note = "\t# - New flows: not metered (engine.new_flows_per_user = 0)."
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
{sets}"""  # noqa: E501


def new_flows_per_user(rate: int) -> str:
    """The output hook's meter of new flows per user (none at rate 0)."""
    if not rate:
        return ""
    return (f"\t\tct state new update @new_flows_per_user {{ meta skuid limit rate over "
            f"{rate}/second burst {2 * rate} packets }} counter name new_flows_over_limit "
            "drop\n")


def new_flows_per_source(names: str, rate: int) -> str:
    """The forward hook's meter of new flows per source address, from the interfaces
    `names` (none at rate 0)."""
    return "".join(
        f"\t\tct state new iifname {names} update @new_flows_per_source{n} {{ {field} saddr "
        f"limit rate over {rate}/second burst {2 * rate} packets }} counter name "
        f"new_flows_over_limit drop\n" for n, field in ((4, "ip"), (6, "ip6")) if rate)


def queries_per_socket() -> str:
    """DNS queries metered per sending socket before the queue."""
    return _per_family("queries_per_socket", "saddr . th sport", QUERIES_PER_SOCKET,
                       "dns_queries_over_limit")


def answers_per_socket() -> str:
    """DNS answers to this host metered per socket they go to."""
    return _per_family("answers_per_socket", "daddr . th dport", ANSWERS_PER_SOCKET,
                       "dns_answers_over_limit")


def answers_per_client() -> str:
    """DNS answers to forwarded clients metered per client address."""
    return _per_family("answers_per_client", "daddr", ANSWERS_PER_FORWARDED_CLIENT,
                       "dns_answers_over_limit")


def _per_family(meter: str, key: str, limit: tuple[int, int], counter: str) -> str:
    """One rule per family: over `limit` for its `key`, the packet is counted and dropped."""
    rate, burst = limit
    return "\n".join(
        f"\t\tmeta nfproto {family} update @{meter}{n} {{ {field} {key} limit rate over "
        f"{rate}/second burst {burst} packets }} counter name {counter} drop"
        for family, n, field in (("ipv4", 4, "ip"), ("ipv6", 6, "ip6")))
