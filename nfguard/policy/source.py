"""Line numbers for TOML values: the parser reports them only for syntax errors.

A light scan of the text records the line of every table header and key, by the path the
parsed document gives that value ("policy", 0, "rule", 2, "to"), so a validation message
can say exactly where the bad value was written.

Every start and reload locates each client, policy and rule (for `explain` and messages),
and a policy can have 100k rules: those are `[[array]]` headers, found in one pass of a
regular expression over the whole text. The line-by-line scan of every header and key runs
only when a message asks for a line the headers cannot answer.
"""

from __future__ import annotations

import re

_ARRAY_HEADER = re.compile(r"^\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]")
_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*(?:\.\s*[A-Za-z0-9_-]+\s*)*=""")
# _ARRAY_HEADER searched in the whole text (the caller checks what stands before it on its
# line): it finds the same lines as the line scan when "\n" or "\r\n" ends every line.
_ARRAY_HEADER_ANYWHERE = re.compile(r"\[\[[^\S\n]*([A-Za-z0-9_.-]+)[^\S\n]*\]\]")
_OTHER_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # and a lone "\r"

Path = tuple[str | int, ...]


class SourceMap:
    """Maps value paths of one TOML document to (first line, last line) of their text."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: list[str] = []
        self._spans: dict[Path, list[int]] | None = None  # the line scan, once needed
        # Each array of tables ("policy", 3, "rule") -> the header line of each element.
        self._arrays: dict[Path, list[int]] = {}
        if any(c in text for c in _OTHER_LINE_BREAKS) or text.count("\r") != text.count("\r\n"):
            return  # lines as str.splitlines() cuts them: the line scan answers everything
        lineno, seen = 1, 0
        name, elements = None, []
        for header in _ARRAY_HEADER_ANYWHERE.finditer(text):
            start = header.start()
            if start and text[start - 1] != "\n":  # only blanks may stand before it
                line_start = text.rfind("\n", 0, start) + 1
                if not text[line_start:start].isspace():
                    continue
            lineno += text.count("\n", seen, start)
            seen = start
            if header[1] != name:  # else the same array as the header before: no lookup
                name = header[1]
                elements = self._arrays.setdefault(_header_path(name, self._arrays), [])
            elements.append(lineno)

    def _scan(self) -> dict[Path, list[int]]:
        if self._spans is not None:
            return self._spans
        self._lines = self._text.splitlines()
        spans: dict[Path, list[int]] = {}
        arrays: dict[Path, list[int]] = {}
        open_spans: list[Path] = []
        current: Path = ()

        def close(lineno: int) -> None:
            for path in open_spans:
                spans[path][1] = lineno - 1
            open_spans.clear()

        for lineno, raw in enumerate(self._lines, 1):
            line = raw.strip()
            header = _ARRAY_HEADER.match(line)
            if header:
                current = _header_path(header.group(1), arrays)
                elements = arrays.setdefault(current, [])
                current = (*current, len(elements))
                elements.append(lineno)
            elif header := _TABLE_HEADER.match(line):
                current = _header_path(header.group(1), arrays)
            if header:
                close(lineno)
                spans.setdefault(current, [lineno, lineno])
                continue
            key = _KEY.match(line)
            if key:
                close(lineno)
                path = (*current, key.group(1).strip("\"'"))
                if path not in spans:
                    spans[path] = [lineno, lineno]
                    open_spans.append(path)
        close(len(self._lines) + 1)
        self._spans = spans
        return spans

    def line(self, path: Path, needle: str | None = None) -> int:
        """Line of the value at `path`; with `needle`, the line inside it where that token is.

        Falls back to the nearest enclosing path that was seen, and to line 1. The needle
        must stand as a whole token (so port 0 is not found in "80").
        """
        if needle is None and path and isinstance(path[-1], int):
            # Only array headers make paths that end in an index.
            elements = self._arrays.get(path[:-1], ())
            if 0 <= path[-1] < len(elements):
                return elements[path[-1]]
        spans = self._scan()
        token = None if needle is None else re.compile(
            rf"(?<![\w.:/*-]){re.escape(needle)}(?![\w.:/*-])")
        for end in range(len(path), -1, -1):
            span = spans.get(path[:end])
            if span is None:
                continue
            if token is not None:
                for lineno in range(span[0], span[1] + 1):
                    if token.search(self._lines[lineno - 1]):
                        return lineno
            return span[0]
        return 1


def _header_path(name: str, arrays: dict[Path, list[int]]) -> Path:
    """The path of a `[name]` or `[[name]]` header, where each array along the way stands
    for its last element so far; `arrays` holds the element lines of the arrays seen."""
    *parents, last = name.split(".")
    path: Path = ()
    for part in parents:
        path = (*path, part)
        elements = arrays.get(path)
        if elements:
            path = (*path, len(elements) - 1)
    return (*path, last)
