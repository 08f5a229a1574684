"""Line numbers for TOML values: tomllib reports them only for syntax errors.

A light scan of the text records the line of every table header and key, by the path the
parsed document gives that value ("policy", 0, "rule", 2, "to"), so a validation message
can say exactly where the bad value was written.
"""

from __future__ import annotations

import re
from collections import defaultdict

_ARRAY_HEADER = re.compile(r"^\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]")
_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*(?:\.\s*[A-Za-z0-9_-]+\s*)*=""")

Path = tuple[str | int, ...]


class SourceMap:
    """Maps value paths of one TOML document to (first line, last line) of their text."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()
        self._spans: dict[Path, list[int]] = {}
        counts: dict[Path, int] = defaultdict(int)
        open_spans: list[Path] = []
        current: Path = ()

        def close(lineno: int) -> None:
            for path in open_spans:
                self._spans[path][1] = lineno - 1
            open_spans.clear()

        for lineno, raw in enumerate(self._lines, 1):
            line = raw.strip()
            header = _ARRAY_HEADER.match(line) or _TABLE_HEADER.match(line)
            if header:
                close(lineno)
                current = self._header_path(header, counts)
                self._spans.setdefault(current, [lineno, lineno])
                continue
            key = _KEY.match(line)
            if key:
                close(lineno)
                path = (*current, key.group(1).strip("\"'"))
                if path not in self._spans:
                    self._spans[path] = [lineno, lineno]
                    open_spans.append(path)
        close(len(self._lines) + 1)

    @staticmethod
    def _header_path(header: re.Match[str], counts: dict[Path, int]) -> Path:
        parts = header.group(1).split(".")
        is_array = header.group(0).startswith("[[")
        path: Path = ()
        for i, part in enumerate(parts):
            path = (*path, part)
            last = i == len(parts) - 1
            if last and is_array:
                index = counts[path]
                counts[path] += 1
                path = (*path, index)
            elif not last and counts.get(path):
                path = (*path, counts[path] - 1)
        return path

    def line(self, path: Path, needle: str | None = None) -> int:
        """Line of the value at `path`; with `needle`, the line inside it where that token is.

        Falls back to the nearest enclosing path that was seen, and to line 1. The needle
        must stand as a whole token (so port 0 is not found in "80").
        """
        token = None if needle is None else re.compile(
            rf"(?<![\w.:/*-]){re.escape(needle)}(?![\w.:/*-])")
        for end in range(len(path), -1, -1):
            span = self._spans.get(path[:end])
            if span is None:
                continue
            if token is not None:
                for lineno in range(span[0], span[1] + 1):
                    if token.search(self._lines[lineno - 1]):
                        return lineno
            return span[0]
        return 1
