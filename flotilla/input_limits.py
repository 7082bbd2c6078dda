"""Bounds on what Flotilla reads, so a hostile or broken file costs a second, not the machine.

A request or workflow file is refused when it is larger than `FLOTILLA_MAX_INPUT_BYTES`, when
it is binary or not UTF-8 (naming the byte offset), and when its YAML aliases would expand it
far beyond its own size (a "billion laughs" bomb: a few hundred bytes that unfold into billions
of values). Aliases themselves are fine; only their expansion is bounded.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from flotilla.errors import Problem, SpecError
from flotilla.settings import get_settings

MAX_ALIASES = 1_000  # more alias uses than any hand-written file needs
EXPANSION_SLACK = 10_000  # values an expanded document may have beyond twice its own nodes


def read_input(path: Path) -> str:
    """The file's text; a SpecError naming the file for anything too large, binary or not UTF-8."""
    source = str(path)
    limit = get_settings().max_input_bytes
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise SpecError(source, [Problem("", "file not found; check the path")]) from None
    except IsADirectoryError:
        raise SpecError(source, [Problem("", "is a directory; name a YAML file")]) from None
    except OSError as exc:
        raise SpecError(source, [Problem("", f"cannot be read: {exc.strerror}")]) from None
    check_size(len(data), source)
    nul = data.find(b"\0")
    if nul >= 0:
        raise SpecError(
            source,
            [Problem("", f"binary file (a NUL byte at offset {nul}); expected YAML text", None)],
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise SpecError(
            source,
            [Problem("", f"not UTF-8 text: byte 0x{bad} at offset {exc.start}", line)],
        ) from None


def check_size(size: int, source: str) -> None:
    """Refuse input larger than `FLOTILLA_MAX_INPUT_BYTES` (a file, or a request sent as text)."""
    limit = get_settings().max_input_bytes
    if size > limit:
        raise SpecError(
            source,
            [
                Problem(
                    "",
                    f"the file is larger than {limit:,} bytes (FLOTILLA_MAX_INPUT_BYTES); keep "
                    "long prompts short or raise that limit",
                )
            ],
        )


def check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases unfold into far more values than it is written with."""
    sizes: dict[int, int] = {}  # node -> values it unfolds into, once its children are known
    seen: set[int] = set()
    written = aliases = 0
    cyclic = False
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # post-order without recursion: a deep document cannot overflow the stack
        node, children_done = stack.pop()
        children = _children(node)
        if children_done:
            if any(id(c) not in sizes for c in children):
                cyclic = True  # an alias of its own ancestor: it unfolds forever
                break
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            continue
        if id(node) in seen:
            aliases += 1
            continue
        seen.add(id(node))
        written += 1
        stack.append((node, True))
        stack.extend((c, False) for c in children)
    if cyclic:
        raise SpecError(
            source,
            [Problem("", "a YAML alias refers to its own ancestor, so it expands forever")],
        )
    limit = 2 * written + EXPANSION_SLACK
    if aliases > MAX_ALIASES or sizes[id(root)] > limit:
        raise SpecError(
            source,
            [
                Problem(
                    "",
                    f"YAML aliases expand this file to more than {limit:,} values (it has "
                    f"{written:,} written ones and {aliases:,} alias uses); write the values "
                    "out instead of nesting aliases",
                )
            ],
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
