"""Name patterns of policy rules: `*` is exactly one label, `**` one or more labels.

Patterns are split into labels once, at load time; matching a name is then a label-wise
comparison, and the index in `policy.match` only ever compares a name against the few
patterns that share its literal suffix.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

ONE_LABEL = "*"
ANY_LABELS = "**"

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# A whole name of wildcards and valid labels: every label passes the check below, which
# alone words the errors (and decides the rare texts this does not match).
_WILDCARD_OR_LABEL = r"(?:\*\*?|(?!-)[a-z0-9_-]{1,63}(?<!-))"
_VALID_NAME = re.compile(rf"(?:{_WILDCARD_OR_LABEL}\.)*{_WILDCARD_OR_LABEL}")
_ASCII_LETTER_OR_STAR = re.compile(r"[A-Za-z*]")


def normalize_name(name: str) -> str:
    """Case-insensitive and trailing-dot-insensitive form used everywhere names are compared."""
    return name.strip().lower().rstrip(".")


class NamePattern(NamedTuple):
    text: str  # as written, normalised
    labels: tuple[str, ...]

    @property
    def literal_suffix(self) -> str:
        """The labels after the last wildcard: every name the pattern matches ends with them."""
        star = self.text.rfind("*")  # the end of the last wildcard, a label of its own
        return self.text if star < 0 else self.text[star + 2:]

    def matches(self, name: str) -> bool:
        return _match_labels(self.labels, tuple(name.split(".")))


def parse_name_pattern(text: str) -> NamePattern:
    """Parse and validate a pattern; raises ValueError saying what is wrong."""
    name = normalize_name(text)
    if not name:
        raise ValueError("empty name")
    if len(name) > 253:
        raise ValueError(f"name {text!r} is longer than 253 characters")
    labels = tuple(name.split("."))
    if _VALID_NAME.fullmatch(name):
        return NamePattern(name, labels)
    for label in labels:
        if label in (ONE_LABEL, ANY_LABELS):
            continue
        if "*" in label:
            raise ValueError(
                f"{text!r}: a wildcard must be a whole label ('*' one label, '**' any depth)"
            )
        if not _LABEL.match(label):
            raise ValueError(f"{text!r}: {label!r} is not a valid DNS label")
    return NamePattern(name, labels)


def is_pattern_text(text: str) -> bool:
    """A `to` entry is a name pattern when it is not an address or network."""
    if ":" in text:
        return False
    if text.isascii():
        return _ASCII_LETTER_OR_STAR.search(text) is not None
    return any(c.isalpha() or c == "*" for c in text)


@lru_cache(maxsize=65536)
def _match_labels(pattern: tuple[str, ...], name: tuple[str, ...]) -> bool:
    if not pattern:
        return not name
    head = pattern[0]
    if head == ANY_LABELS:
        # One or more labels, then the rest of the pattern.
        return any(_match_labels(pattern[1:], name[i:]) for i in range(1, len(name) + 1))
    if not name:
        return False
    if head == ONE_LABEL or head == name[0]:
        return _match_labels(pattern[1:], name[1:])
    return False
