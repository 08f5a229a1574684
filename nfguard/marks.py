"""Mark bits shared by the nft ruleset and the queue adapter.

The verdict lives in the conntrack mark under `MASK`, so user marks outside it survive and
a decided flow never reaches user space again. The engine hands its verdict back as packet
mark bits; the ruleset's `settle` chain copies them into the ct mark. Bits 28-30 are used
because routing rules rarely look at them (a packet mark set in OUTPUT triggers a reroute).
"""

from enum import Enum
from typing import Final

MASK = 0x70000000  # all bits nfguard owns, in packet and ct marks
USER_BITS = ~MASK & 0xFFFFFFFF  # the others: kept as they are wherever nfguard sets its own
VERDICT_MASK = 0x30000000  # the verdict field inside MASK
ALLOW = 0x10000000
DENY = 0x20000000
# Both verdict bits: "decided to wait". In the ct mark, a flow whose verdict depends on the
# name the client will present (TLS SNI, HTTP Host, QUIC); its packets go to the engine
# again. In a packet mark coming to the engine (with QUEUED), "this flow is pending".
PENDING = 0x30000000
QUEUED = 0x40000000  # packet mark only: "this packet is on its way to the engine"
# In the ct mark only: PENDING set by the ruleset itself at a flow's SYN (its destination
# in the one-trip sets, see nfguard.onetrip), so the engine has not seen the flow yet. The
# first of its packets to go to the engine clears the extra bit (the rules read the
# verdict field alone: such a flow is pending to them) and carries UNSEEN.
KERNEL_PENDING = PENDING | QUEUED
# QUEUED | ALLOW means one thing per hook, never a verdict (`settle` compares the whole of
# MASK, so an unanswered packet with it is not taken for an allowed one):
# - on LOCAL_OUT (UNSEEN): "the first packet of a flow the ruleset made pending", a new
#   flow whatever the engine remembers of its addresses and ports (a connection on a
#   reused tuple is another flow);
# - on LOCAL_IN and FORWARD (ANSWER): "a DNS answer" (to this host, or on its way to a
#   forwarded client), which the engine learns from instead of judging; a query to this
#   host's resolver from a forwarded client comes in on LOCAL_IN with QUEUED alone.
UNSEEN = QUEUED | ALLOW
ANSWER = QUEUED | ALLOW


# A socket mark (SO_MARK) of nfguard's own: the refusal the engine writes to a client whose
# DNS query it refused, from the server's address. The ruleset lets it through to the
# client without a verdict and without reading it as an answer. Never set by the ruleset
# (QUEUED with DENY means nothing else) nor returned as a verdict.
INJECTED = QUEUED | DENY


def is_answer(mark: int) -> bool:
    """Whether a queued packet's mark says DNS answer (see ANSWER)."""
    return mark & MASK == ANSWER


def with_verdict(mark: int, verdict: int) -> int:
    """The packet mark to hand back: the user's bits kept, ours replaced by the verdict."""
    return (mark & USER_BITS) | verdict


class Held(Enum):
    HOLD = "hold"
    DROP = "drop"


# The engine's answer for a packet it keeps (a pending flow's, until its name is read):
# no mark now, its verdict comes later through the queue adapter's release(token, mark).
HOLD: Final = Held.HOLD
# The engine's answer for a packet that must not leave and must not decide its flow (a
# refused DNS query: the socket's later queries are judged each on their own).
DROP: Final = Held.DROP
