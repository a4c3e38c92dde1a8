"""Imports inside itr_lib run one way (no import circle, function-local imports included) and no module grows past
~400 lines without saying why. The graph is read from the source (the AST of every module), not from a running
interpreter, so an import that happens only inside a function counts too."""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "itr_lib"
MAX_LINES = 450          # "a few hundred lines": ~400, with some slack before a reason is required
REASON_WORD = "Why one module"  # a module above MAX_LINES says why in its docstring, on a line starting with this


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at ``root`` (a package's ``__init__`` is the package)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = (root.name,) + p.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file), resolving relative imports, ``from pkg
    import submodule`` and the parent packages Python imports first (except the importer's own ancestors, which are
    already being imported when it runs)."""
    mods = module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                    mod = ".".join(base + (node.module.split(".") if node.module else []))
                else:
                    mod = node.module or ""
                targets.add(mod)
                targets |= {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods}
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                sub = ".".join(parts[:i])
                if sub in mods and sub != name and (sub == t or sub not in ancestors):
                    graph[name].add(sub)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                c = visit(t)
                if c:
                    return c
        stack.pop()
        state[m] = 2
        return None
    for m in sorted(graph):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return None


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize("files,cycle", [
    # a function-local import closing a circle through a sub-package's __init__
    ({"pkg/__init__.py": "", "pkg/a.py": "def f():\n    from .sub import g\n",
      "pkg/sub/__init__.py": "from .b import g\n", "pkg/sub/b.py": "from ..a import f\ndef g(): pass\n"},
     True),
    # the same modules, one way only
    ({"pkg/__init__.py": "", "pkg/a.py": "def f():\n    from .sub import g\n",
      "pkg/sub/__init__.py": "from .b import g\n", "pkg/sub/b.py": "import math\ndef g(): pass\n"},
     False),
    # a submodule importing its own package's __init__ (which imports it): a circle
    ({"pkg/__init__.py": "", "pkg/sub/__init__.py": "from .b import g\n",
      "pkg/sub/b.py": "from . import c\ndef g(): pass\n", "pkg/sub/c.py": "from pkg.sub import g\n"},
     True),
    # sibling submodules, imported through the package name: fine
    ({"pkg/__init__.py": "", "pkg/sub/__init__.py": "from .b import g\n",
      "pkg/sub/b.py": "from pkg.sub.c import h\ndef g(): pass\n", "pkg/sub/c.py": "def h(): pass\n"},
     False),
])
def test_the_checker_finds_circles_it_should(tmp_path, files, cycle):
    graph = import_graph(_write(tmp_path, files))
    assert (find_cycle(graph) is not None) == cycle, graph


def test_no_import_circle_in_itr_lib():
    graph = import_graph(LIB)
    assert "itr_lib.efficiency.hardware" in graph["itr_lib.efficiency.scaling"]
    assert "itr_lib.efficiency.pareto" in graph["itr_lib.plots.efficiency"]  # a function-local import is seen
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_module_is_long_without_a_reason():
    too_long = []
    for name, path in module_names(LIB).items():
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if not any(line.strip().startswith(REASON_WORD) for line in doc.splitlines()):
                too_long.append(f"{path.relative_to(LIB.parent)} ({n} lines)")
    assert not too_long, (f"modules over {MAX_LINES} lines: {too_long}; split them along their sections, or say why "
                          f"not on a docstring line starting with {REASON_WORD!r}")
