"""Layering: ``import yolo`` imports no torch; no import cycle in ``yolo/`` counting imports inside
functions; inference code never reaches the training modules.

The graph is read from the source with ``ast`` (every ``import`` and ``from ... import``, at the
top and inside functions, relative ones resolved); what runs only under ``if TYPE_CHECKING:``
or ``if __name__ == "__main__":`` (annotations; a tool's script entry) is not an import of the
library; the imports made by name (the engine registry's modules, ``yolo``'s lazy attributes,
the ``darknet-yolo`` tools) are added to the graph.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "yolo"

#: inference: sources -> engine -> post-processing -> outputs, and evaluation
INFERENCE = ("yolo.detector", "yolo.detect_inputs", "yolo.backends", "yolo.backends.base", "yolo.backends.pytorch",
             "yolo.backends.ort", "yolo.sources", "yolo.outputs", "yolo.evaluate", "yolo.weights_file",
             "yolo.cli.detect", "yolo.cli.test")
TRAINING = ("yolo.trainer", "yolo.hyp", "yolo.ema", "yolo.distributed", "yolo.checkpoint", "yolo.cli.train")


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package) for every ``.py`` under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _skipped(node: ast.If) -> bool:
    """``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:`` / ``if __name__ == "__main__":``."""
    test = node.test
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
        return True
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _skipped(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import sub`` counts as importing ``sub``)."""
    known = modules(root)
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in known.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                targets.add(sub if sub in known else target)
        graph[name] = {t for t in targets if t.split(".")[0] == top and t in known and t != name}
    return graph


def _literal(path: Path, name: str) -> object:
    """The value of a module-level ``name = <literal>`` (a tuple or dict of names) in ``path``."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        targets = [node.target] if isinstance(node, ast.AnnAssign) else targets
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path}: no literal {name}")


def with_dynamic_imports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` plus the imports made by name at run time: the engine modules the registry loads
    (``yolo.backends.ENGINE_MODULES``), the lazy attributes of ``yolo`` and the tools of the
    ``darknet-yolo`` dispatcher."""
    graph = {k: set(v) for k, v in graph.items()}
    graph["yolo.backends"] |= {f"yolo.backends.{m}" for m in _literal(PACKAGE / "backends" / "__init__.py",
                                                                       "ENGINE_MODULES")}
    graph["yolo"] |= {f"yolo.{m}" for m in _literal(PACKAGE / "__init__.py", "_LAZY").values()}
    graph["yolo.cli.main"] |= {m for m, _ in _literal(PACKAGE / "cli" / "main.py", "TOOLS").values()}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path a -> ... -> a), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def reach(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or not -> the module that imports it (for a path)."""
    seen, todo = {start: ""}, [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen[nxt] = node
                todo.append(nxt)
    return seen


def path_to(parents: dict[str, str], end: str) -> str:
    chain = [end]
    while parents[chain[-1]]:
        chain.append(parents[chain[-1]])
    return " -> ".join(reversed(chain))


def test_import_yolo_imports_no_torch():
    code = ("import sys, yolo, yolo.cfg, yolo.errors, yolo.assets, yolo.backends; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('torch', 'yolo')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_lazy_names_resolve():
    import yolo
    from yolo.detect_inputs import DetectError

    assert yolo.DetectError is DetectError and yolo.Darknet.__name__ == "Darknet"
    assert issubclass(yolo.ConfigError, yolo.YoloError) and issubclass(yolo.YoloError, ValueError)
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        yolo.Nothing  # noqa: B018


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
                              "if __name__ == '__main__':\n    import pkg.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.c"] == set()
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_no_import_cycle():
    cycle = find_cycle(with_dynamic_imports(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_dynamic_imports_are_seen():
    graph = with_dynamic_imports(import_graph())
    assert {"yolo.backends.pytorch", "yolo.backends.ort"} <= graph["yolo.backends"]
    assert {"yolo.model", "yolo.detector"} <= graph["yolo"] and "yolo.cli.train" in graph["yolo.cli.main"]


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_does_not_import_training_modules(module):
    graph = with_dynamic_imports(import_graph())
    parents = reach(graph, module)
    bad = [path_to(parents, m) for m in TRAINING if m in parents]
    assert not bad, "inference reaches training code: " + "; ".join(bad)


def test_library_code_does_not_raise_the_cli_error():
    graph = import_graph()
    library = [m for m in graph if not m.startswith("yolo.cli")]
    users = sorted(m for m in library if "yolo.cli.common" in graph[m])
    # the tools that still parse their own arguments may use the CLI helpers; no other module may
    assert set(users) <= {"yolo.info", "yolo.partial", "yolo.anchors", "yolo.prune", "yolo.deploy",
                          "yolo.data"}, users
    for m in users + ["yolo.export"]:
        path = modules()[m][0]
        assert "raise UserError" not in path.read_text(), f"{m} raises the command line's UserError"


# ---------------------------------------------------------------------------------------------
# issue 19: the inference path imports no torch at module level (torch only where its engine runs)
# ---------------------------------------------------------------------------------------------
#: the modules detect.py and test.py on an .onnx or a plain Darknet cfg go through
TORCH_FREE = ("yolo.detector", "yolo.detect_inputs", "yolo.sources", "yolo.outputs", "yolo.boxes",
              "yolo.backends", "yolo.backends.base", "yolo.backends.ort", "yolo.backends.opencv",
              "yolo.backends.pytorch", "yolo.backends.auto", "yolo.weights_file", "yolo.cli.detect",
              "yolo.cli.common", "yolo.cli.test", "yolo.evaluate", "yolo.eval_data", "yolo.sharding",
              "yolo.classify")


def module_level_imports(path: Path, name: str, is_package: bool, known: set[str]) -> set[str]:
    """What importing the module runs: its imports outside functions (and outside ``if
    TYPE_CHECKING:``), as package modules or bare top-level names (``torch``)."""
    package = name if is_package else name.rpartition(".")[0]
    found, todo = set(), [ast.parse(path.read_text(encoding="utf-8"))]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and _skipped(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        todo.extend(ast.iter_child_nodes(node))
    out = set()
    for target in found:  # importing a.b.c runs a and a.b first
        parts = target.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {t for t in out if t in known or "." not in t}


@pytest.mark.parametrize("module", TORCH_FREE)
def test_inference_reaches_no_torch_at_import(module):
    known = modules()
    graph = {n: module_level_imports(p, n, pkg, set(known)) for n, (p, pkg) in known.items()}
    parents = reach(graph, module)
    bad = [path_to(parents, m) for m in parents if m == "torch" or m.startswith("torch.")]
    assert not bad, f"{module} imports torch at import time: " + "; ".join(bad)
