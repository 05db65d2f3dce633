"""Where each key of a TOML document is defined: ``tomllib`` parses but gives no positions, and an
error about a job file must name the line.

This is a line scanner, not a TOML parser: the text has already parsed with ``tomllib``, so it only
has to follow table headers (``[a.b]``, ``[[a]]`` with their index), ``key = value`` lines (dotted and
quoted keys), and skip the inside of multi-line strings and multi-line arrays or inline tables. A
key inside an inline table or an array is found as the line of the key that holds it.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _split_key(text: str) -> list[str] | None:
    """``a."b.c".d`` -> ["a", "b.c", "d"]; None if it is not a key."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] in "\"'":
            q = text[i]
            j = _closing(text, q, i + 1)
            if j < 0:
                return None
            parts.append(text[i + 1 : j])
            i = j + 1
        else:
            m = _BARE.match(text, i)
            if not m:
                return None
            parts.append(m.group())
            i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i == n:
            return parts
        if text[i] != ".":
            return None
        i += 1


def _key_end(line: str) -> int:
    """Index of the ``=`` that ends a key at the start of ``line`` (outside quotes), or -1."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "=":
            return i
        elif ch == "#":
            return -1
    return -1


def _closing(text: str, quote: str, start: int) -> int:
    """Where ``quote`` closes a string that began before ``start`` (-1: not on this text). Basic
    strings (double quotes) skip what a backslash escapes; literal strings (single quotes) have none."""
    if quote[0] == "'":
        return text.find(quote, start)
    i = start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(quote, i):
            return i
        i += 1
    return -1


def _depth_change(value: str) -> tuple[int, str]:
    """Net bracket depth of a value's text outside strings, and an unclosed triple quote if any."""
    depth, i, n = 0, 0, len(value)
    while i < n:
        if value.startswith(('"""', "'''"), i):
            q = value[i : i + 3]
            j = _closing(value, q, i + 3)
            if j < 0:
                return depth, q
            i = j + 3
            continue
        ch = value[i]
        if ch in "\"'":
            j = _closing(value, ch, i + 1)
            i = n if j < 0 else j + 1
            continue
        if ch == "#":
            break
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        i += 1
    return depth, ""


def key_lines(text: str) -> dict[Path, int]:
    """Each key path (array-of-tables elements by index) -> the 1-based line that defines it."""
    lines: dict[Path, int] = {}
    table: Path = ()
    arrays: dict[tuple[str, ...], int] = {}  # [[a.b]] -> index of its current element
    depth, in_string = 0, ""

    def resolve(keys: list[str]) -> Path:
        out: list[str | int] = []
        for k in range(len(keys)):
            out.append(keys[k])
            prefix = tuple(keys[: k + 1])
            if prefix in arrays:
                out.append(arrays[prefix])
        return tuple(out)

    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if in_string:
            if in_string in line:
                in_string = ""
            continue
        if depth > 0:
            d, in_string = _depth_change(line)
            depth += d
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            keys = _split_key(line[2 : line.find("]]")] if "]]" in line else "")
            if keys:
                arrays[tuple(keys)] = arrays.get(tuple(keys), -1) + 1
                table = resolve(keys)
                lines.setdefault(table, no)
                lines.setdefault(table[:-1], no)
            continue
        if line.startswith("["):
            keys = _split_key(line[1 : line.find("]")] if "]" in line else "")
            if keys:
                table = resolve(keys)
                lines.setdefault(table, no)
            continue
        eq = _key_end(line)
        if eq < 0:
            continue
        keys = _split_key(line[:eq])
        if not keys:
            continue
        full = table + tuple(keys)
        for k in range(len(table) + 1, len(full) + 1):
            lines.setdefault(full[:k], no)
        depth, in_string = _depth_change(line[eq + 1 :])
    return lines


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, or of the nearest enclosing key that has one."""
    for k in range(len(path), 0, -1):
        if path[:k] in lines:
            return lines[path[:k]]
    return None
