"""How often, and when, something was observed: the counts and times in comments."""

from __future__ import annotations

from dataclasses import dataclass

from nfguard.suggest.events import Flow, Query
from nfguard.suggest.text import comment_text

QUERY_NOUN = ("query", "queries")  # what `Seen.describe` counts of DNS queries


@dataclass
class Seen:
    """How often, and when first and last, something was observed."""

    count: int = 0
    first: str | None = None
    last: str | None = None

    def add(self, seen: Flow | Query) -> None:
        self.count += 1
        if seen.timestamp is not None:
            if self.first is None or seen.timestamp < self.first:
                self.first = seen.timestamp
            if self.last is None or seen.timestamp > self.last:
                self.last = seen.timestamp

    def merge(self, other: Seen) -> None:
        self.count += other.count
        for ts in (other.first, other.last):
            if ts is not None:
                self.first = ts if self.first is None or ts < self.first else self.first
                self.last = ts if self.last is None or ts > self.last else self.last

    def describe(self, noun: str = "flow", plural: str = "") -> str:
        flows = f"{self.count} {noun if self.count == 1 else plural or noun + 's'}"
        if self.first is None:
            return flows
        if self.first == self.last:
            return f"{flows}, seen {comment_text(self.first)}"
        first, last = comment_text(self.first), comment_text(self.last or "")
        return f"{flows}, first seen {first}, last {last}"
