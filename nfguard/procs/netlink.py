"""What every netlink message starts with; shared by the sock_diag and proc connector code."""

from __future__ import annotations

import struct

NLMSG_ERROR = 0x02
NLMSG_DONE = 0x03
NLM_F_REQUEST = 0x01

# struct nlmsghdr: len, type, flags, seq, pid
NLMSGHDR = struct.Struct("=IHHII")
