"""The tree's shape (issue 23): no module-level import cycle in ``ltt/``, the package's layers
with at most :data:`MAX_UPWARD` import arrows running back up, modules under 500 lines,
JavaScript files under 400. Read from the source by an AST walk; nothing is imported.

For cycles, an import inside a function (a lazy import, e.g. ``ltt.__getattr__``) is not an
arrow: only imports that run when a module is first imported can make a cycle. For the layers
every import counts, wherever it stands (in a function, under ``if TYPE_CHECKING``, or as
``importlib.import_module("ltt....")`` with a literal name): a lazy import is where an upward
arrow hides once module-level cycles are forbidden."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "ltt"
MAX_PY_LINES = 500
MAX_JS_LINES = 400


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _top_level_imports(tree: ast.Module, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The ltt modules that ``name`` imports while it is itself imported: statements at module
    level, including those inside module-level if/try blocks, but not in functions or classes,
    and not under ``if TYPE_CHECKING``."""
    out: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]

    def visit(stmts):
        for node in stmts:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "ltt":
                        out.add(_nearest(a.name, known))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.split(".")[0] != "ltt":
                    continue
                for a in node.names:  # ``from ltt.x import y``: y may be a submodule
                    sub = f"{mod}.{a.name}"
                    out.add(sub if sub in known else _nearest(mod, known))
            elif isinstance(node, ast.If):
                test = node.test
                if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                    visit(node.orelse)
                    continue
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.With,)):
                visit(node.body)

    visit(tree.body)
    out.discard(name)
    return out


def _nearest(mod: str, known: set[str]) -> str:
    while mod not in known and "." in mod:
        mod = mod.rpartition(".")[0]
    return mod


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        deps = _top_level_imports(tree, name, path.name == "__init__.py", known)
        # importing a.b.c runs a/__init__ and a/b/__init__ first: a package's own parents are
        # not arrows of its own (they are entered before it, never imported by it)
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(old)
    return out


def test_the_cycle_finder_finds_a_cycle():
    """The checker itself: a two-module cycle and a three-module one are found, a chain is not."""
    g = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(find_cycles(g)) == [["a", "b"], ["c", "d", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_walk_reads_module_level_imports_only():
    tree = ast.parse("import ltt.graph\nfrom ltt import nodes\nfrom . import scores\n"
                     "def f():\n    import ltt.trace\n"
                     "try:\n    from ltt.checks import is_int\nexcept ImportError:\n    pass\n")
    known = {"ltt", "ltt.graph", "ltt.nodes", "ltt.scores", "ltt.trace", "ltt.checks"}
    assert _top_level_imports(tree, "ltt.contrast", False, known) == {"ltt.graph", "ltt.nodes", "ltt.scores",
                                                                      "ltt.checks"}


#: The package's layers, lowest first (docs/internals.md explains them). A module may import
#: from its own layer and the layers below; an import of a higher layer is an upward arrow.
#: Every module is listed by itself or by a package above it (the longest match wins).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("ltt.checks", "ltt.config", "ltt.nodes", "ltt.output", "ltt.progress")),
    ("kernels", ("ltt.kernels", "ltt._reference")),
    ("scores", ("ltt.buffers", "ltt.plan", "ltt.scores")),
    ("models", ("ltt.models", "ltt.backends", "ltt.interventions", "ltt.ablations")),
    ("graph", ("ltt.graph", "ltt.graph_parts")),
    ("analysis", ("ltt.interpret", "ltt.faithfulness", "ltt.circuits", "ltt.contrast", "ltt.routes", "ltt.tasks")),
    ("face", ("ltt", "ltt.trace", "ltt.trace_file", "ltt.report", "ltt.report_panels", "ltt.widget", "ltt.serve", "ltt.cli")),
]
MAX_UPWARD = 5


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The index of ``module``'s layer (None when no entry covers it). The package ``ltt``
    itself covers only ``ltt/__init__.py``."""
    best = None
    for i, (_, names) in enumerate(layers):
        for n in names:
            if module == n or (n != "ltt" and module.startswith(n + ".")):
                if best is None or len(n) > best[1]:
                    best = (i, len(n))
    return None if best is None else best[0]


def _all_imports(tree: ast.Module, name: str, is_package: bool, known: set[str]) -> set[tuple[str, int]]:
    """``(module, line)`` of every ltt import in ``tree``, wherever it stands."""
    out: set[tuple[str, int]] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {(_nearest(a.name, known), node.lineno) for a in node.names if a.name.split(".")[0] == "ltt"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "ltt":
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    out.add((sub if sub in known else _nearest(mod, known), node.lineno))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and str(node.args[0].value).split(".")[0] == "ltt"):
            out.add((_nearest(str(node.args[0].value), known), node.lineno))
    return {(m, line) for m, line in out if m != name and not name.startswith(m + ".")}


def upward_arrows(layers=LAYERS) -> list[str]:
    """``"importer:line -> imported (layer -> higher layer)"`` for every import in ``ltt/`` that
    runs back up the layers."""
    mods = _modules()
    known = set(mods)
    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        here = layer_of(name, layers)
        for dep, line in sorted(_all_imports(tree, name, path.name == "__init__.py", known)):
            there = layer_of(dep, layers)
            if here is not None and there is not None and there > here:
                out.append(f"{name}:{line} -> {dep} ({layers[here][0]} -> {layers[there][0]})")
    return out


def _arrow_pairs(arrows: list[str]) -> list[str]:
    """One entry per (importer, imported) pair: two lines importing the same module are one arrow."""
    return sorted({a.split(":")[0] + " -> " + a.split(" -> ")[1].split(" (")[0] for a in arrows})


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if layer_of(m) is None]
    assert not missing, "modules in no layer of tests/test_layout.py's LAYERS (add each where it belongs):\n" + \
        "\n".join(missing)


def test_the_import_walk_reads_every_import():
    tree = ast.parse("from ltt.graph import x\ndef f():\n    from ltt import trace\n"
                     "if TYPE_CHECKING:\n    import ltt.widget\n"
                     "def g():\n    importlib.import_module('ltt.report')\n")
    known = {"ltt", "ltt.graph", "ltt.trace", "ltt.widget", "ltt.report"}
    assert {m for m, _ in _all_imports(tree, "ltt.contrast", False, known)} == \
        {"ltt.graph", "ltt.trace", "ltt.widget", "ltt.report"}
    assert layer_of("ltt.models.record") == layer_of("ltt.models") and layer_of("ltt.new_module") is None
    assert layer_of("ltt") == len(LAYERS) - 1


def test_the_layer_check_finds_an_upward_arrow():
    """The checker itself: with the graph module put in the base layer, its imports of the
    kernels and scores run back up and are named."""
    layers = [(n, tuple(m for m in mods if m != "ltt.graph") + (("ltt.graph",) if n == "base" else ()))
              for n, mods in LAYERS]
    arrows = upward_arrows(layers)
    assert any(a.startswith("ltt.graph:") and "-> ltt.scores (base -> scores)" in a for a in arrows), arrows
    assert len(_arrow_pairs(arrows)) > len(_arrow_pairs(upward_arrows()))


def test_import_arrows_running_back_up_the_layers_are_few():
    """At most MAX_UPWARD (importer, imported) pairs run from a lower layer to a higher one
    (docs/internals.md lists them and why each stays)."""
    arrows = upward_arrows()
    pairs = _arrow_pairs(arrows)
    assert len(pairs) <= MAX_UPWARD, (
        f"{len(pairs)} import arrows run back up the layers (at most {MAX_UPWARD}); move the code to "
        "the layer it belongs in, or the import's user up:\n" + "\n".join(arrows))


def test_no_module_level_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "module-level import cycles in ltt/ (move an import into the function that needs it, " \
        "or the shared code down a level):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _long_files(pattern: str, limit: int) -> list[str]:
    out = []
    for p in sorted(ROOT.rglob(pattern)):
        text = p.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > limit:
            out.append(f"{p.relative_to(ROOT.parent)}: {n} lines (limit {limit})")
    return out


def test_python_modules_are_under_500_lines():
    long = _long_files("*.py", MAX_PY_LINES)
    assert not long, "modules over the limit:\n" + "\n".join(long)


def test_javascript_files_are_under_400_lines():
    """The page's modules (ltt/widget/static/**/*.js) under 400 lines each (their join, the
    script anywidget loads, exists only in memory: ltt.widget.bundle.script)."""
    long = _long_files("*.js", MAX_JS_LINES)
    assert not long, "JavaScript files over the limit:\n" + "\n".join(long)
