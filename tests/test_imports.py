"""The modules of afqmc/ import each other one way: no import circle, counting imports inside
functions too (a circle hidden in a function still means neither module stands without the other)."""

import ast

from conftest import ROOT


def afqmc_imports() -> dict[str, set[str]]:
    """Each afqmc module's imports of other afqmc modules, anywhere in its source."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "afqmc").glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("afqmc."):
                names.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "afqmc":
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("afqmc."))
        graph[path.stem] = names - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_afqmc_has_no_import_circle():
    graph = afqmc_imports()
    assert {"predict", "ensemble", "saved", "train", "config"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert "predict" not in graph["ensemble"] and "saved" in graph["ensemble"]
