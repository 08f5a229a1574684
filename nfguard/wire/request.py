"""What a client's first request says about its destination, shared by HTTP/1 and h2c.

A request head gives the method, the target and the effective host: the host the server
will act on, which is what the policy judges.  ``parse_host`` is the one normaliser of an
authority, for Host fields, absolute-form targets and HTTP/2's ``:authority`` alike.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import NamedTuple

from nfguard.wire.errors import WireError

__all__ = ["TCHARS", "TOKEN", "RequestHead", "parse_host"]

TCHARS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"  # RFC 9110 5.6.2 tchar, as a regex class
TOKEN = re.compile(TCHARS + rb"+\Z")
# Stricter than RFC 3986 reg-name on purpose: only host-name bytes (LDH and "_"), so that
# sub-delims, userinfo or percent-escapes can never make a value look like a policy name
# to us and like something else to the server.
_HOST = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*\Z")
_PORT = re.compile(r"[0-9]{0,5}\Z")


class RequestHead(NamedTuple):
    """The request line and the effective host (None when the request names none).

    A NamedTuple, not a frozen dataclass: one is built for every plain-HTTP flow, and a
    tuple costs a fraction of a frozen dataclass's field-by-field setattr."""

    method: str
    target: str
    host: str | None


# Remembered: a host's clients name the same few hosts over and over (a value it rejects
# raises, and is not remembered).
@functools.lru_cache(maxsize=1024)
def parse_host(value: str) -> str | None:
    """Normalise a ``uri-host [":" port]`` authority to a lower-case host without port.

    IPv6 literals lose their brackets and take their canonical text; a trailing dot is
    dropped; an empty value gives None (RFC 9110 7.2 allows an empty Host).  Anything that
    is not a valid authority (userinfo included) raises ``WireError``.
    """
    if not value:
        return None
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise WireError("http: unterminated IPv6 literal")
        rest = value[close + 1 :]
        if rest and not (rest.startswith(":") and _PORT.match(rest[1:])):
            raise WireError("http: bad port after IPv6 literal")
        try:
            return str(ipaddress.IPv6Address(value[1:close]))
        except ValueError:
            raise WireError("http: bad IPv6 literal") from None
    host, sep, port = value.rpartition(":")
    if not sep:
        host = value
    elif not _PORT.match(port):
        raise WireError("http: bad port")
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253 or not _HOST.match(host):
        raise WireError("http: bad host")
    return host
