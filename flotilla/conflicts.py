"""File-overlap analysis: which units may change the same path, and in which order they run.

Two units conflict when one of their `touches` globs can match a path the other's can match:
glob against glob, so `src/auth/*.py` and `src/**/login.py` conflict (both match
`src/auth/login.py`) while `src/auth/*.py` and `docs/*.md` do not. The test builds a small
automaton for each glob and asks whether the two accept a common string.

Glob syntax: `*` and `?` stay within one path segment, `**` as a whole segment spans any number
of segments (`**/` may match none), `[abc]`, `[a-z]`, `[!abc]` are character classes and `{a,b}`
lists alternatives. A glob ending in `/` covers everything under it, and so does a path without
wildcards whose last part has no `.` (`src/auth` is taken as a directory, `src/auth.py` as a
file).

Conflicting units never run at the same time: they get a serialising edge, oriented by a
deterministic rank (priority, then longest remaining critical path, then request order), and only
between units the graph does not already order, so no edge can ever close a cycle.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations

import networkx as nx

EVERYTHING = "**"
WILDCARDS = re.compile(r"[*?\[{]")

# A character test: (chars, negated). (chars, False) accepts exactly `chars`; (chars, True)
# accepts every character but `chars`. The alphabet is open-ended, so a negated set is never empty.
CharSet = tuple[frozenset[str], bool]
ANY: CharSet = (frozenset(), True)
NOT_SLASH: CharSet = (frozenset("/"), True)


@dataclass(frozen=True)
class Glob:
    """A glob as an NFA: `moves[state]` lists (CharSet, next state); `skips` are ε-moves."""

    text: str
    moves: tuple[tuple[tuple[CharSet, int], ...], ...]
    skips: tuple[tuple[int, ...], ...]
    accept: frozenset[int]
    start: int = 0


@dataclass
class ConflictGroup:
    """Units linked by overlapping `touches`, the overlaps found and the edges that order them."""

    units: list[str]
    overlaps: list[tuple[str, str, str, str]] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "units": self.units,
            "overlaps": [{"units": [a, b], "globs": [ga, gb]} for a, b, ga, gb in self.overlaps],
            "edges": [{"from": a, "to": b} for a, b in self.edges],
        }


# --- globs ---------------------------------------------------------------------------------------


def normalize(pattern: str) -> str:
    text = pattern.strip()
    while text.startswith("./"):
        text = text[2:]
    text = text.lstrip("/")
    if not text or text == ".":
        return EVERYTHING
    if text.endswith("/"):
        return text + EVERYTHING
    return text


def expand_braces(pattern: str) -> list[str]:
    """`src/{a,b}/*.py` -> `src/a/*.py`, `src/b/*.py` (nested braces too)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    out: list[str] = []
    for choice in match.group(1).split(","):
        out += expand_braces(head + choice + tail)
    return out


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> Glob:
    """The NFA of one normalised glob without braces."""
    moves: list[list[tuple[CharSet, int]]] = [[]]
    skips: list[list[int]] = [[]]

    def new_state() -> int:
        moves.append([])
        skips.append([])
        return len(moves) - 1

    state = 0
    segments = pattern.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            if last:  # `a/**`: one or more characters of anything below
                nxt = new_state()
                moves[state].append((ANY, nxt))
                moves[nxt].append((ANY, nxt))
                state = nxt
            else:  # `**/`: zero or more whole directories
                nxt = new_state()
                skips[state].append(nxt)
                moves[state].append((ANY, state))
                moves[state].append(((frozenset("/"), False), nxt))
                state = nxt
            continue
        for charset in _segment_charsets(segment):
            if charset is None:  # `*`
                moves[state].append((NOT_SLASH, state))
                continue
            nxt = new_state()
            moves[state].append((charset, nxt))
            state = nxt
        if not last:
            nxt = new_state()
            moves[state].append(((frozenset("/"), False), nxt))
            state = nxt
    accept = {state}
    if _names_directory(pattern):
        below, inside = new_state(), new_state()
        moves[state].append(((frozenset("/"), False), below))
        moves[below].append((ANY, inside))
        moves[inside].append((ANY, inside))
        accept.add(inside)
    return Glob(
        pattern,
        tuple(tuple(m) for m in moves),
        tuple(tuple(s) for s in skips),
        frozenset(accept),
    )


def _names_directory(pattern: str) -> bool:
    """`src/auth` may be a directory; `src/auth.py` and `src/*.py` are taken as files."""
    return not WILDCARDS.search(pattern) and "." not in pattern.rsplit("/", 1)[-1]


def _segment_charsets(segment: str) -> list[CharSet | None]:
    """One segment as character tests; None stands for `*` (a loop on non-slash characters)."""
    out: list[CharSet | None] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            while i < len(segment) and segment[i] == "*":
                i += 1
            out.append(None)
            continue
        if char == "?":
            out.append(NOT_SLASH)
        elif char == "[" and (end := _class_end(segment, i)) > 0:
            out.append(_charclass(segment[i + 1 : end]))
            i = end
        else:
            out.append((frozenset(char), False))
        i += 1
    return out


def _class_end(segment: str, start: int) -> int:
    """Index of the `]` closing the class opened at `start`, or -1 (then `[` is literal)."""
    i = start + 1
    if i < len(segment) and segment[i] in "!^":
        i += 1
    if i < len(segment) and segment[i] == "]":
        i += 1
    end = segment.find("]", i)
    return end


def _charclass(body: str) -> CharSet:
    negated = body[:1] in ("!", "^")
    if negated:
        body = body[1:]
    chars: set[str] = set()
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            chars.update(chr(c) for c in range(ord(body[i]), ord(body[i + 2]) + 1))
            i += 3
        else:
            chars.add(body[i])
            i += 1
    if negated:
        return (frozenset(chars | {"/"}), True)
    return (frozenset(chars - {"/"}), False)


def _meet(a: CharSet, b: CharSet) -> bool:
    """Is there a character both tests accept?"""
    (sa, na), (sb, nb) = a, b
    if na and nb:
        return True
    if na:
        return bool(sb - sa)
    if nb:
        return bool(sa - sb)
    return bool(sa & sb)


def _closure(glob: Glob, states: set[int]) -> frozenset[int]:
    stack, seen = list(states), set(states)
    while stack:
        for nxt in glob.skips[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return frozenset(seen)


def _intersects(a: Glob, b: Glob) -> bool:
    """Do the two automata accept a common string? (A search over pairs of states.)"""
    start = (a.start, b.start)
    seen = {start}
    stack = [start]
    while stack:
        sa, sb = stack.pop()
        left, right = _closure(a, {sa}), _closure(b, {sb})
        if left & a.accept and right & b.accept:
            return True
        for pa in left:
            for ca, na in a.moves[pa]:
                for pb in right:
                    for cb, nb in b.moves[pb]:
                        if (na, nb) not in seen and _meet(ca, cb):
                            seen.add((na, nb))
                            stack.append((na, nb))
    return False


def _literal_prefix(pattern: str) -> str:
    found = WILDCARDS.search(pattern)
    return pattern[: found.start()] if found else pattern


@lru_cache(maxsize=65536)
def globs_overlap(first: str, second: str) -> bool:
    """Can some path match both globs? `src/auth/*.py` vs `src/**/login.py` -> True."""
    for a in expand_braces(normalize(first)):
        for b in expand_braces(normalize(second)):
            pa, pb = _literal_prefix(a), _literal_prefix(b)
            if not (pa.startswith(pb) or pb.startswith(pa)):
                continue  # different fixed beginnings can never match the same path
            if a == b or _intersects(compile_glob(a), compile_glob(b)):
                return True
    return False


def first_overlap(first: Sequence[str], second: Sequence[str]) -> tuple[str, str] | None:
    """The first pair of globs (one from each list) that can match the same path."""
    for a in first:
        for b in second:
            if globs_overlap(a, b):
                return a, b
    return None


# --- serialising edges ---------------------------------------------------------------------------


def effective_touches(touches: Sequence[str], unknown_touches: str) -> list[str]:
    """A unit's globs; with `unknown_touches: serialize` an empty list means everything."""
    if touches:
        return list(touches)
    return [EVERYTHING] if unknown_touches == "serialize" else []


def conflicting_pairs(touches: Mapping[str, Sequence[str]]) -> list[tuple[str, str, str, str]]:
    """(unit a, unit b, glob of a, glob of b) for every overlapping pair, in request order."""
    pairs = []
    for a, b in combinations(list(touches), 2):
        found = first_overlap(touches[a], touches[b])
        if found:
            pairs.append((a, b, *found))
    return pairs


def serialize_conflicts(
    graph: nx.DiGraph,
    touches: Mapping[str, Sequence[str]],
    rank: Sequence[str],
) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str]], list[ConflictGroup]]:
    """Add an edge between every two conflicting units the graph does not already order.

    `rank` lists every unit, most urgent first; of two conflicting units the better ranked one
    runs first. Each unit is linked to the nearest better-ranked unit it conflicts with first,
    so a group of units touching one file becomes a chain, not a clique. An edge is added only
    between units neither of which reaches the other, so the graph stays acyclic.
    Returns (overlaps, edges added, conflict groups).
    """
    overlaps = conflicting_pairs(touches)
    position = {u: i for i, u in enumerate(rank)}
    partners: dict[str, set[str]] = {u: set() for u in touches}
    for a, b, _, _ in overlaps:
        partners[a].add(b)
        partners[b].add(a)
    added: list[tuple[str, str]] = []
    for unit in rank:
        earlier = sorted(
            (p for p in partners.get(unit, ()) if position[p] < position[unit]),
            key=position.__getitem__,
            reverse=True,
        )
        for other in earlier:
            if nx.has_path(graph, other, unit) or nx.has_path(graph, unit, other):
                continue
            graph.add_edge(other, unit, reasons={"conflict"})
            added.append((other, unit))
    groups = _groups(touches, overlaps, added)
    return overlaps, added, groups


def _groups(
    touches: Mapping[str, Sequence[str]],
    overlaps: list[tuple[str, str, str, str]],
    added: list[tuple[str, str]],
) -> list[ConflictGroup]:
    order = {u: i for i, u in enumerate(touches)}
    linked = nx.Graph()
    linked.add_edges_from((a, b) for a, b, _, _ in overlaps)
    groups = []
    for component in nx.connected_components(linked):
        units = sorted(component, key=order.__getitem__)
        groups.append(
            ConflictGroup(
                units=units,
                overlaps=[o for o in overlaps if o[0] in component],
                edges=[e for e in added if e[0] in component],
            )
        )
    return sorted(groups, key=lambda g: order[g.units[0]])
