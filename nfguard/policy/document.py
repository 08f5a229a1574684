"""TOML text -> document, parsed in steps that each hold the GIL briefly.

tomli's compiled parser does not return to the interpreter before it is done: on a policy
of 100k rules (10 MB) that is a second in which no other thread runs, and the daemon builds
a reloaded policy in a thread while its packet thread goes on deciding. So a large text is
cut before `[[a]]` and `[[a.b]]` header lines into pieces of about `STEP` characters, each
parsed alone and joined to the document so far. The join is checked to give exactly what
one parse of the whole text gives; when it cannot, and on any error, the whole text is
parsed at once (so every error, and its line, is the parser's own).

Why a checked join is exact: a piece starts with an array-of-tables header (a cut inside a
multi-line string or array leaves the piece before it unterminated, an error). A piece that
starts with `[[a]]` may then only hold arrays of tables, each begun in it by its own
`[[k]]` line (any other top-level value would not be a list), and `[[k]]` resets whatever
the parser knew under `k`: it joins as more elements of arrays that earlier such pieces
began. A piece that starts with `[[a.b]]` continues the last element of `a`, so it is
parsed after a `[[a]]` line of its own and may only add elements to `b` there, which must
be absent from that element (the element's first `[[a.b]]` begins the piece) or begun by an
earlier such piece.
"""

from __future__ import annotations

import re
from typing import Any

try:  # tomli's compiled wheel parses 2.5x faster than the stdlib's copy of it
    import tomli as toml
except ImportError:  # the same parser (TOML 1.0, same messages), pure Python
    import tomllib as toml  # type: ignore[no-redef]

TOMLDecodeError = toml.TOMLDecodeError
STEP = 1 << 16  # characters per piece, ~5 ms of parsing

# A line that begins with `[[a]]` or `[[a.b]]`: where a piece may start.
_CUT_HEADER = re.compile(r"^\[\[([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_-]+))?\]\]", re.M)


class _NotJoinable(Exception):
    """The pieces do not join into what one parse of the whole text gives."""


def loads(text: str) -> dict[str, Any]:
    """Like `tomllib.loads`: the document, or TOMLDecodeError."""
    cuts = _cuts(text)
    if cuts:
        try:
            return _join(text, cuts)
        except (TOMLDecodeError, _NotJoinable):
            pass
    return toml.loads(text)


def _cuts(text: str) -> list[int]:
    """Where pieces start: about STEP apart, at `[[a]]` or `[[a.b]]` lines; the first piece
    ends before the first array of tables, and an element of `a` is cut inside only from
    its first `[[a.b]]` line on."""
    if len(text) < 2 * STEP:
        return []
    first = _CUT_HEADER.search(text)
    if first is None or first[2] is not None:
        return []
    cuts = [first.start()]
    while (header := _CUT_HEADER.search(text, cuts[-1] + STEP)) is not None:
        at = header.start()
        if header[2] is not None:  # inside an element: did it begin in this piece?
            piece, opening = cuts[-1], f"[[{header[1]}]]"
            element = piece if text.startswith(opening, piece) else \
                text.rfind("\n" + opening, piece, at)
            if element >= 0:  # then cut before its first [[a.b]] line instead
                at = text.find(f"\n[[{header[1]}.{header[2]}]]", element) + 1
        cuts.append(at)
    return cuts


def _join(text: str, cuts: list[int]) -> dict[str, Any]:
    document = toml.loads(text[: cuts[0]])
    begun: set[str] = set()  # top-level arrays of tables begun by a piece
    begun_inner: set[int] = set()  # id() of the inner arrays begun by a piece
    for start, end in zip(cuts, [*cuts[1:], len(text)], strict=True):
        header = _CUT_HEADER.match(text, start)
        assert header is not None
        outer, inner = header[1], header[2]
        if inner is None:
            piece = toml.loads(text[start:end])
        else:
            piece = toml.loads(f"[[{outer}]]\n{text[start:end]}")
            continued, *more = piece[outer]
            if list(continued) != [inner] or outer not in begun:
                raise _NotJoinable
            element = document[outer][-1]
            if inner not in element:
                element[inner] = continued[inner]
                begun_inner.add(id(element[inner]))
            elif id(element[inner]) in begun_inner:
                element[inner].extend(continued[inner])
            else:
                raise _NotJoinable
            piece[outer] = more
        for key, value in piece.items():
            if not isinstance(value, list):
                raise _NotJoinable
            if key not in document:
                document[key] = value
                begun.add(key)
            elif key in begun:
                document[key].extend(value)
            else:
                raise _NotJoinable
    return document
