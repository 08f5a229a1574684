"""Strings written into TOML: values, `match` patterns and comments, whatever events held."""

from __future__ import annotations

import re


def toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped; lone
    surrogates (which JSON can carry but TOML cannot) become U+FFFD."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\uFFFD")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def fnmatch_escape(text: str) -> str:
    """Make `text` match only itself under fnmatchcase (client `exe` is a pattern)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def comment_text(text: str) -> str:
    """Text safe inside a one-line TOML comment (no control characters, no newline)."""
    safe = "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?"
                   for c in text)
    return safe
