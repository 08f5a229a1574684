"""`nfguard names ADDR|NAME`: what the running engine's name cache holds, and why.

Like Cilium's `fqdn cache list`: for each (address, name) pair, when it expires, and the
DNS answer that taught it (the server that answered, the socket it answered, the question,
the TTL it gave, the names the same answer chained to that address). The daemon answers
the control request ("names") with `listing`; the command line shows it with `render`.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from nfguard.control import Handler, Reply
from nfguard.logview import printable
from nfguard.status import duration, when

if TYPE_CHECKING:  # the command line renders without loading the engine's modules
    from nfguard.names.learner import Learner

MAX_LISTED = 200  # pairs in one answer (it must stay far below a socket buffer)


def normalise(key: str) -> str:
    """An address as the engine writes it (compressed), or the name as given."""
    try:
        return ipaddress.ip_address(key.strip("[]")).compressed
    except ValueError:
        return key.strip()


def listing(learner: Learner, key: str, now: float, limit: int = MAX_LISTED) -> dict[str, Any]:
    """The pairs of an address or a name ("": all, most recently used first)."""
    from nfguard.names.learner import FROM_PEER, MAX_ORIGINS

    key = normalise(key)
    found = learner.names.entries(key, now)
    pairs = []
    for ip, name, expiry in found[:limit]:
        row: dict[str, Any] = {"ip": ip, "name": name, "expires_at": expiry,
                               "chain": list(learner.aliases(ip, name))}
        told = learner.origins.get((ip, name))
        if told is None:
            row["origin"] = None  # taught before the last MAX_ORIGINS bindings
        else:
            origin, ttl = told
            row["ttl"] = ttl
            row["origin"] = None if origin is FROM_PEER else origin._asdict()
            row["from_peer"] = origin is FROM_PEER
        pairs.append(row)
    return {"query": key, "now": now, "pairs": pairs, "total": len(found),
            "cache_size": len(learner.names), "grace": learner.names.grace,
            "min_ttl": learner.names.min_ttl, "origins_kept": MAX_ORIGINS}


def names_handler(learner: Learner) -> Handler:
    """The control request {"command": "names", "query": "ADDR|NAME"} (query optional)."""
    def on_names(request: dict[str, Any], _reply: Reply) -> dict[str, Any]:
        key = request.get("query", "")
        if not isinstance(key, str):
            return {"ok": False, "error": "names: \"query\" must be a string"}
        return {"ok": True, "names": listing(learner, key, learner.clock())}
    return on_names


def render(answer: dict[str, Any]) -> str:
    """The listing for a person; every name from the wire made printable."""
    now, pairs = answer["now"], answer["pairs"]
    what = f" for {answer['query']}" if answer["query"] else ""
    if not pairs:
        return printable(f"no names{what} in the cache ({answer['cache_size']} pairs; "
                         "a name is learnt from a DNS answer of a trusted resolver)") + "\n"
    lines = []
    for pair in pairs:
        expires = pair["expires_at"]
        lines.append(f"{pair['ip']}  {pair['name']}  expires in {duration(expires - now)} "
                     f"({when(expires)})")
        origin = pair["origin"]
        if origin is not None:
            question = origin["question"]
            asked = f", question {question}" if question and question != pair["name"] else ""
            lines.append(f"  learnt {when(origin['learnt_at'])} from {origin['resolver']} "
                         f"({origin['transport']}) answering {origin['client']}{asked}; "
                         f"TTL {pair['ttl']} s")
        elif pair.get("from_peer"):
            lines.append(f"  learnt by another engine worker; TTL {pair['ttl']} s")
        else:
            lines.append(f"  learnt before the last {answer['origins_kept']} bindings: its "
                         "answer is forgotten")
        if pair["chain"]:
            lines.append(f"  same answer, same address: {', '.join(pair['chain'])}")
    if answer["total"] > len(pairs):
        lines.append(f"... {answer['total'] - len(pairs)} more pairs not shown")
    lines.append(f"(expiry: the answer's TTL, at least {answer['min_ttl']:g} s, plus "
                 f"{answer['grace']:g} s of grace)")
    return "\n".join(printable(line) for line in lines) + "\n"
