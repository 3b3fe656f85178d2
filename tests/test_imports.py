"""The package graph: no import cycle among compiler's modules (module-level imports, as Python
runs them; imports inside functions and under TYPE_CHECKING are lazy and left out)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).parent.parent / "compiler"


def modules() -> dict[str, Path]:
    """compiler's own modules by dotted name (the zoo and targets links are data, not code)."""
    found = {}
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        if rel.parts[1] in ("zoo", "targets"):
            continue
        name = ".".join(rel.parts)
        found[name.removesuffix(".__init__")] = f
    return found


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The compiler modules a module imports when it is loaded."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for n in ast.walk(node):
            if isinstance(n, ast.Import):
                out |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                subs = {f"{n.module}.{a.name}" for a in n.names}
                out |= subs & known  # `from package import module` loads the module
                if subs - known:
                    out.add(n.module)
    return out & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(ast.parse(f.read_text()), set(mods)) - {m} for m, f in mods.items()}


def test_no_import_cycle():
    graphlib.TopologicalSorter(graph()).prepare()  # raises CycleError naming the cycle


def test_the_check_sees_a_cycle():
    g = graph()
    g["compiler.ir"] = g["compiler.ir"] | {"compiler.driver"}  # driver imports ir
    try:
        graphlib.TopologicalSorter(g).prepare()
    except graphlib.CycleError:
        return
    raise AssertionError("a cycle through compiler.ir was not found")


def test_the_stages_import_one_way():
    """Earlier stages never import later ones at load time, except the placer's input type
    (placement/problem.py: plain data that tiling's `to_problem` adapts to)."""
    order = ["ir", "target", "frontend", "tiling", "placement", "schedule", "executor", "verify"]
    def stage(module: str) -> str:
        return (module.split(".") + [""])[1]

    for m, deps in graph().items():
        if stage(m) not in order:
            continue
        later = {d for d in deps if stage(d) in order[order.index(stage(m)) + 1:]}
        later -= {"compiler.placement.problem"}
        assert not later, f"{m} imports later stage(s) {sorted(later)}"
