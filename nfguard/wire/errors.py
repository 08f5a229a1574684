"""The one exception type the wire parsers raise.

Parsers run inside the NFQUEUE callback, where an unexpected exception would unbind the
queue (see DESIGN.md, pitfalls).  Every parser therefore turns malformed input into a
``WireError`` and nothing else, so the caller needs exactly one ``except`` clause.
"""

from __future__ import annotations


class WireError(ValueError):
    """Malformed, truncated, oversized or unsupported bytes on the wire."""
