"""The package's shape: no import circle between its modules (docs/architecture.md)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bdunlearn"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every module's imports of the package's own modules, those inside functions too
    (a lazy import still ties the two modules together)."""
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                name = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{name}.{alias.name}"
                    graph[mod].add(full if full in mods else name)
            elif isinstance(node, ast.Import):
                graph[mod].update(alias.name for alias in node.names)
        graph[mod] = {m for m in graph[mod] if m in mods and m != mod}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def plug_ins(group: list[str]) -> bool:
    """A package and the plug-ins it registers (its ``__init__`` imports each method's
    module, which imports the registry back): one unit, not a circle between units."""
    top = min(group, key=len)
    return all(m == top or m.startswith(top + ".") for m in group) and top != "bdunlearn"


def test_no_import_circle_between_modules():
    found = [g for g in circles(imports(modules())) if not plug_ins(g)]
    assert not found, f"import circles: {found}"


def test_the_circle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert not plug_ins(["bdunlearn.claims", "bdunlearn.summary"])
    assert plug_ins(["bdunlearn.defenses", "bdunlearn.defenses.baeraser"])
