"""The package's layers (README, "Developers: the layers"): no import cycles between modules or between
folders, every module imports only modules of its own layer or of lower ones, and imports inside functions
(which hide cycles from a reader) are kept for optional packages only. Imports inside functions count
everywhere here. `python tests/test_layers.py` prints the counts."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "toybb"
# lowest first; a module belongs to the longest prefix listed
LAYERS = [
    ("toybb._version", "toybb.errors", "toybb.names", "toybb.records", "toybb.checkpoints", "toybb.device",
     "toybb.style", "toybb.cliargs", "toybb.texts"),
    ("toybb.models.config",),  # the model section of a run config sits with the models
    ("toybb.config",),
    ("toybb.task", "toybb.reference", "toybb.reference.build"),
    ("toybb.models",),
    ("toybb.llm",),
    ("toybb.plot", "toybb.probes"),
    ("toybb.train", "toybb.pretrain"),
    ("toybb.theory", "toybb.reference.compare", "toybb.longctx", "toybb.series"),
    ("toybb.gallery", "toybb.intervene", "toybb.intervene_cli", "toybb.toy_sinks", "toybb.api"),
    ("toybb.commands", "toybb.cli", "toybb"),
]
# modules whose functions may import toybb modules, and why
LAZY_IMPORTS = {
    "toybb": "`import toybb` stays light: toybb.load and toybb.Edit load JAX when first used",
}
# folder edges left out of the cycle check, and why
KNOWN_FOLDER_EDGES = {
}


def _name(p: Path) -> str:
    return ".".join(("toybb",) + p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports() -> list[tuple[str, str, bool, int]]:
    """(module, imported toybb module, inside a function, line) of every import of a toybb module."""
    names = {_name(p) for p in ROOT.rglob("*.py")}
    out = []
    for p in sorted(ROOT.rglob("*.py")):
        mod = _name(p)
        tree = ast.parse(p.read_text())
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        for n in ast.walk(tree):
            deps = set()
            if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "toybb":
                for a in n.names:
                    deps.add(f"{n.module}.{a.name}" if f"{n.module}.{a.name}" in names else n.module)
            elif isinstance(n, ast.Import):
                deps |= {a.name for a in n.names if a.name.split(".")[0] == "toybb"}
            out += [(mod, d, id(n) in inner, n.lineno) for d in sorted(deps) if d != mod]
    return out


def _modules() -> dict[str, set[str]]:
    mods: dict[str, set[str]] = {_name(p): set() for p in ROOT.rglob("*.py")}
    for mod, dep, _, _ in _imports():
        mods[mod].add(dep)
    return mods


def folder(mod: str) -> str:
    """toybb.X for every module of the folder toybb/X; a top-level module is its own folder."""
    return ".".join(mod.split(".")[:2])


def folder_graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for mod, dep, _, _ in _imports():
        a, b = folder(mod), folder(dep)
        if a != b and a != "toybb" and b != "toybb":
            g.setdefault(a, set()).add(b)
    return g


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (a path whose last node is its first), or None."""
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:  # d is on the current path
                on = path + [m]
                return on[on.index(d):] + [d]
            if d not in state:
                found = visit(d, path + [m])
                if found:
                    return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [])
            if found:
                return found
    return None


def lazy_imports() -> list[tuple[str, str, int]]:
    """(module, imported toybb module, line) of every import of a toybb module inside a function."""
    return [(m, d, line) for m, d, inner, line in _imports() if inner]


def _layer(mod: str) -> int:
    best = max((p for layer in LAYERS for p in layer if mod == p or mod.startswith(p + ".")), key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def test_every_module_imports_only_its_layer_or_lower():
    mods = _modules()
    bad = sorted(f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
                 for m, deps in mods.items() for d in deps if _layer(d) > _layer(m))
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    cycle = find_cycle(_modules())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycles_between_folders():
    g = folder_graph()
    for a, b in KNOWN_FOLDER_EDGES:
        g.get(a, set()).discard(b)
    cycle = find_cycle(g)
    assert cycle is None, "folders import each other: " + " -> ".join(cycle)


def test_the_cycle_checks_see_imports_inside_functions():
    g = {"toybb.train": {"toybb.plot"}, "toybb.plot": {"toybb.reference"}, "toybb.reference": {"toybb.train"}}
    assert find_cycle(g) == ["toybb.plot", "toybb.reference", "toybb.train", "toybb.plot"]
    assert find_cycle({"toybb.train": {"toybb.plot"}, "toybb.plot": set()}) is None
    assert ("toybb", "toybb.api", True) in {(m, d, inner) for m, d, inner, _ in _imports()}


def test_imports_inside_functions_only_where_listed():
    bad = [f"{m}:{line} imports {d} inside a function; import it at the top (or list {m} in LAZY_IMPORTS with "
           "the reason)" for m, d, line in lazy_imports() if m not in LAZY_IMPORTS]
    assert not bad, "\n".join(bad)


if __name__ == "__main__":
    lazy = lazy_imports()
    print(f"imports of toybb modules inside functions: {len(lazy)}")
    g = folder_graph()
    print("folder cycle (known edges included):", find_cycle(g))
    sizes = {p: len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    big = max(sizes, key=sizes.get)
    print(f"largest module: {big.relative_to(ROOT.parent)} ({sizes[big]} lines)")
