"""The key-line scanner against documents whose lines are known: written here from random tables,
arrays of tables, dotted and quoted keys, multi-line arrays and strings; tomllib must read back the
same data, and every key must be found on the line it was written on."""

from __future__ import annotations

import json
import tomllib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from source_agent.jobs.lines import key_lines

bare = st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True)
quoted = st.from_regex(r"[a-z .=#\[\]]{1,6}", fullmatch=True)
scalars = st.one_of(
    st.integers(-1000, 1000),
    st.booleans(),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8),
)


def key_text(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)


class Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.where: dict[tuple[Any, ...], int] = {}

    def kv(self, path: tuple[Any, ...], key: str, value: Any, style: int) -> Any:
        """Write ``key = value``; returns the value TOML reads back."""
        line = len(self.lines) + 1
        self.where[(*path, key)] = line
        k = key_text(key)
        if isinstance(value, list) and style == 1:  # a multi-line array
            self.lines.append(f"{k} = [")
            self.lines += [f"  {json.dumps(v)}," for v in value]
            self.lines.append("]")
        elif isinstance(value, str) and style == 2 and '"' not in value and "\\" not in value:
            self.lines += [f'{k} = """', value, '"""']  # a multi-line string
            return value + "\n"
        else:
            self.lines.append(f"{k} = {json.dumps(value)}  # a comment")
        return value

    def table(self, header: str) -> None:
        self.lines += ["", header]


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[tuple[Any, ...], int]]:
    w = Writer()
    data: dict[str, Any] = {}
    keys = draw(st.lists(st.one_of(bare, quoted), unique=True, max_size=4))
    for k in keys:
        v = draw(st.one_of(scalars, st.lists(st.integers(0, 9), max_size=3)))
        data[k] = w.kv((), k, v, draw(st.integers(0, 2)))
    for t in draw(st.lists(bare, unique=True, max_size=3)):
        if t in data:
            continue
        if draw(st.booleans()):  # [[t]] elements
            data[t] = []
            for i in range(draw(st.integers(1, 3))):
                w.table(f"[[{t}]]")
                w.where.setdefault((t,), len(w.lines))
                w.where[(t, i)] = len(w.lines)
                elem: dict[str, Any] = {}
                for k in draw(st.lists(bare, unique=True, max_size=3)):
                    v = draw(scalars)
                    elem[k] = w.kv((t, i), k, v, draw(st.integers(0, 2)))
                data[t].append(elem)
        else:
            w.table(f"[{t}]")
            w.where[(t,)] = len(w.lines)
            table: dict[str, Any] = {}
            for k in draw(st.lists(bare, unique=True, max_size=3)):
                v = draw(scalars)
                if draw(st.booleans()):  # a dotted key: sub.k
                    w.lines.append(f"sub.{key_text(k)} = {json.dumps(v)}")
                    w.where.setdefault((t, "sub"), len(w.lines))
                    w.where[(t, "sub", k)] = len(w.lines)
                    table.setdefault("sub", {})[k] = v
                else:
                    table[k] = w.kv((t,), k, v, draw(st.integers(0, 2)))
            data[t] = table
    return "\n".join(w.lines) + "\n", data, w.where


@settings(max_examples=100, deadline=None)
@given(documents())
def test_every_key_is_found_on_the_line_it_was_written(
    doc: tuple[str, dict[str, Any], dict[tuple[Any, ...], int]],
) -> None:
    text, data, where = doc
    parsed = tomllib.loads(text)
    assert json.loads(json.dumps(parsed)) == json.loads(json.dumps(data))
    found = key_lines(text)
    for path, line in where.items():
        assert found.get(path) == line, (path, text)


def test_an_escaped_quote_in_a_basic_string_does_not_end_it() -> None:
    """Found by the property test above: ``"\\"["`` is one string; the ``[`` inside is not a table."""
    text = '[a]\na = "\\"["  # a comment\n\n[b]\nc = 1\n'
    lines = key_lines(text)
    assert lines[("b",)] == 4 and lines[("b", "c")] == 5 and lines[("a", "a")] == 2
