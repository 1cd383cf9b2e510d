"""The package's layers (README, "Developers: the layers"): no import cycles, and every module imports
only modules of its own layer or of lower ones (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "toybb"
# lowest first; a module belongs to the longest prefix listed
LAYERS = [
    ("toybb._version", "toybb.errors", "toybb.names", "toybb.records", "toybb.device", "toybb.style",
     "toybb.cliargs", "toybb.texts"),
    ("toybb.config",),
    ("toybb.task", "toybb.reference", "toybb.reference.build"),
    ("toybb.models",),
    ("toybb.llm",),
    ("toybb.plot", "toybb.probes"),
    ("toybb.train",),
    ("toybb.theory", "toybb.reference.compare", "toybb.longctx", "toybb.series"),
    ("toybb.figures", "toybb.intervene", "toybb.intervene_cli", "toybb.cli", "toybb.toy_sinks", "toybb.api", "toybb"),
]


def _modules() -> dict[str, set[str]]:
    names = {".".join(("toybb",) + p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
             for p in ROOT.rglob("*.py")}
    out = {}
    for p in ROOT.rglob("*.py"):
        mod = ".".join(("toybb",) + p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "toybb":
                for a in n.names:
                    deps.add(f"{n.module}.{a.name}" if f"{n.module}.{a.name}" in names else n.module)
            elif isinstance(n, ast.Import):
                deps |= {a.name for a in n.names if a.name.split(".")[0] == "toybb"}
        out[mod] = deps - {mod}
    return out


def _layer(mod: str) -> int:
    best = max((p for layer in LAYERS for p in layer if mod == p or mod.startswith(p + ".")), key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def test_every_module_imports_only_its_layer_or_lower():
    mods = _modules()
    bad = sorted(f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
                 for m, deps in mods.items() for d in deps if _layer(d) > _layer(m))
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    mods = _modules()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(mods.get(m, ())):
            if d not in mods:
                continue
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [m, d])
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m, [])
