"""What every netlink message starts with; shared by the queue adapter, sock_diag and the
proc connector code."""

from __future__ import annotations

import struct

NLMSG_ERROR = 0x02
NLMSG_DONE = 0x03
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04

# struct nlmsghdr: len, type, flags, seq, pid
NLMSGHDR = struct.Struct("=IHHII")

# Where messages are read from: a whole datagram, or the part of a kept receive buffer that
# one read filled.
Buffer = bytes | bytearray | memoryview
