"""Glob-against-glob overlap and the serialising edges it adds: deterministic, never a cycle."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from flotilla.conflicts import (
    conflicting_pairs,
    effective_touches,
    globs_overlap,
    serialize_conflicts,
)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("src/auth/*.py", "src/**/login.py"),  # both match src/auth/login.py
        ("src/auth/login.py", "src/auth/login.py"),
        ("src/auth", "src/auth/deep/er.py"),  # a plain path is its directory too
        ("src/auth/", "src/auth/x.py"),
        ("**", "README.md"),
        ("src/**/x.py", "src/x.py"),  # `**/` may match no directory at all
        ("a/**/b/**/c", "a/b/c"),
        ("**/*.md", "docs/guide/intro.md"),
        ("src/[ab].py", "src/[bc].py"),
        ("src/{api,cli}/*.py", "src/cli/main.py"),
        ("src/*_views.py", "src/admin_*.py"),  # admin_views.py
        ("./src/a.py", "/src/a.py"),
    ],
)
def test_globs_that_can_match_one_path_overlap(first, second):
    assert globs_overlap(first, second)
    assert globs_overlap(second, first)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("src/auth/*.py", "docs/*.md"),
        ("src/auth/*.py", "src/auth/sub/x.py"),  # `*` stays within one directory
        ("*.md", "docs/a.md"),
        ("src/*.py", "src/*.js"),
        ("src/[a].py", "src/[c].py"),
        ("src/[!a].py", "src/a.py"),
        ("src/a?.py", "src/a.py"),
        ("src/auth", "src/auth.py"),
        ("src/cli.py", "src/**/login.py"),  # a file name is not a directory
        ("src/a*.py", "src/*b.txt"),
    ],
)
def test_globs_that_cannot_match_one_path_do_not(first, second):
    assert not globs_overlap(first, second)
    assert not globs_overlap(second, first)


def test_unknown_touches_are_trusted_unless_the_workflow_serializes():
    assert effective_touches([], "trust") == []
    assert effective_touches([], "serialize") == ["**"]
    assert effective_touches(["a.py"], "serialize") == ["a.py"]


def test_pairs_name_the_globs_that_overlap():
    pairs = conflicting_pairs(
        {"login": ["src/auth/*.py"], "views": ["src/**/login.py"], "docs": ["docs/*.md"]}
    )
    assert pairs == [("login", "views", "src/auth/*.py", "src/**/login.py")]


def test_a_group_touching_one_file_becomes_a_chain_in_rank_order():
    graph = nx.DiGraph()
    graph.add_nodes_from(["a", "b", "c", "d"])
    touches = {u: ["shared.py"] for u in "abc"} | {"d": ["other.py"]}
    overlaps, added, groups = serialize_conflicts(graph, touches, rank=["c", "a", "b", "d"])
    assert added == [("c", "a"), ("a", "b")]  # c ranked first; no redundant c -> b
    assert len(overlaps) == 3
    assert [g.units for g in groups] == [["a", "b", "c"]]
    assert groups[0].edges == added


def test_units_already_ordered_get_no_edge_and_no_cycle():
    graph = nx.DiGraph([("b", "a")])  # a depends on b, but a is ranked first
    touches = {"a": ["x.py"], "b": ["x.py"]}
    _, added, groups = serialize_conflicts(graph, touches, rank=["a", "b"])
    assert added == []
    assert groups[0].units == ["a", "b"] and groups[0].edges == []
    assert nx.is_directed_acyclic_graph(graph)


@pytest.mark.parametrize("seed", range(20))
def test_random_graphs_stay_acyclic_and_every_conflict_is_ordered(seed):
    rng = random.Random(seed)
    units = [f"u{i}" for i in range(25)]
    graph = nx.DiGraph()
    graph.add_nodes_from(units)
    for i, unit in enumerate(units):
        for dep in rng.sample(units[:i], k=min(i, rng.randint(0, 2))):
            graph.add_edge(dep, unit)
    files = ["src/a/*.py", "src/**/b.py", "docs/*.md", "src/a/b.py", "tests/**", "README.md"]
    touches = {u: rng.sample(files, k=rng.randint(0, 2)) for u in units}
    rank = rng.sample(units, k=len(units))  # any rank, even against the dependencies
    overlaps, added, _ = serialize_conflicts(graph, touches, rank)
    assert nx.is_directed_acyclic_graph(graph)
    for a, b, _, _ in overlaps:
        assert nx.has_path(graph, a, b) or nx.has_path(graph, b, a), (a, b)
    position = {u: i for i, u in enumerate(rank)}
    assert all(position[a] < position[b] for a, b in added)
