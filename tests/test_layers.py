"""Layers point down: tools.bpg < pipeline < trainer (its reports above the rest of it) <
receiver < the scripts' shared folders (docsgen: the docs' generated blocks; fixtures:
synthetic photos and the reference loader) < scripts (demo, experiments, benchmarks), read
from the source with ``ast`` (every import, also those inside functions and under ``if
TYPE_CHECKING``), and no two modules import each other."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("tools", "pipeline", "trainer", "receiver", "docsgen", "fixtures", "demo", "experiments", "benchmarks")
#: (module prefix, layer), the longest prefix wins; tests sit above everything
LAYERS = (("tools", 0), ("pipeline", 1), ("trainer", 2), ("trainer.reports", 3), ("receiver", 4), ("docsgen", 5),
          ("fixtures", 5), ("demo", 6), ("experiments", 6), ("benchmarks", 6), ("tests", 7))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int | None:
    best = None
    for prefix, n in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, n)
    return None if best is None else best[1]


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            out[module_name(path, root)] = path
    return out


def imports(module: str, path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The project modules ``module`` imports (a name imported from a package that is itself a
    module counts as that module)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known and layer(t) is not None:
                t = t.rpartition(".")[0]      # an attribute of a module: the module
            if t in known and t != module:
                found.add(t)
            elif t and t.split(".")[0] not in {f for f in FOLDERS} and t not in sys.stdlib_module_names \
                    and (root / "benchmarks" / f"{t.split('.')[0]}.py").exists():
                found.add("benchmarks." + t.split(".")[0])   # a script put on sys.path by hand
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = project_modules(root)
    known = set(mods) | {module_name(p, root) for p in (root / "tests").rglob("*.py")}   # targets, never walked
    return {m: imports(m, p, known, root) for m, p in mods.items()}


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                  for a, targets in g.items() for b in targets if layer(b) > layer(a))


def test_the_walk_sees_the_project():
    g = graph()
    assert {"tools.bpg", "pipeline.manifest", "trainer.data.loader", "trainer.reports.report", "receiver.core",
            "docsgen.readme_block", "fixtures.synthetic", "demo.__main__", "experiments.common"} <= set(g)
    assert "trainer.vocab" in g["trainer.reports.report"] and "trainer.data.batch" in g["trainer.data.loader"]


def test_no_upward_import():
    assert upward(graph()) == []


def test_a_planted_upward_import_is_found(tmp_path):
    """The check can fail: in a copy of the project's modules, one import of a higher layer,
    made inside a function of a trainer module, is the one thing it reports."""
    for folder in FOLDERS + ("tests",):
        for path in (ROOT / folder).rglob("*.py"):
            copy = tmp_path / path.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(path.read_bytes())
    assert upward(graph(tmp_path)) == []
    planted = tmp_path / "trainer" / "models.py"
    planted.write_text(planted.read_text(encoding="utf-8") + "\n\ndef _planted():\n    from receiver import core\n",
                       encoding="utf-8")
    assert upward(graph(tmp_path)) == ["trainer.models (layer 2) imports receiver.core (layer 4)"]


def test_no_import_cycle():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(g):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_walk_would_see_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    """The checks can fail: a type-only import of the trainer in the pipeline, and two
    trainer modules importing each other, are both found."""
    fake = {"pipeline.x": tmp_path / "x.py", "trainer.a": tmp_path / "a.py", "trainer.b": tmp_path / "b.py"}
    fake["pipeline.x"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from trainer import a\n")
    fake["trainer.a"].write_text("def f():\n    from .b import g\n")
    fake["trainer.b"].write_text("from . import a\n")
    known = set(fake)
    assert imports("pipeline.x", fake["pipeline.x"], known) == {"trainer.a"}
    assert imports("trainer.a", fake["trainer.a"], known) == {"trainer.b"}
    assert imports("trainer.b", fake["trainer.b"], known) == {"trainer.a"}


@pytest.mark.parametrize("module", ["trainer.reports.report", "trainer.reports.results",
                                    "trainer.reports.recommend", "trainer.reports.retention",
                                    "trainer.vocab", "trainer.rundir", "receiver.route"])
def test_the_reports_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
