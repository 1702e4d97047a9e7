"""Imports at module top, one style of package ``__init__`` (docs/architecture.md, "Imports").

A function-body import is allowed in two places only: the command-line modules that
``recstack --help`` imports (each verb imports its implementation when it runs, so help loads
no Beam, Feast or MLflow: tests/unit/test_quiet.py), and an optional dependency probed inside
``try`` with a comment on the line that says so. Every package ``__init__`` is a docstring and
nothing else (the kernel's also carries ``__version__``): callers import from the module that
defines a name, never through a package-level re-export or a lazy ``__getattr__``."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from tests.unit.test_layers import project_modules, write_tree

# The modules `recstack --help` imports (checked by test_help_imports_only_the_cli_modules).
CLI_MODULES = {
    "app.cli", "app.experiments.cli", "app.experiments.drift.cli",
    "app.experiments.loadlab.cli", "app.experiments.online.cli", "monitoring.cli",
    "pipelines.cli", "simulator.cli", "training.cli",
}


def body_imports(path: Path) -> list[tuple[int, str]]:
    """(line, source line) of every import inside a function, except optional-dependency probes
    (inside ``try`` with ``optional`` in the line's comment)."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        chain, up = [], node
        while up in parents:
            up = parents[up]
            chain.append(up)
        if not any(isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef) for c in chain):
            continue
        line = lines[node.lineno - 1]
        if any(isinstance(c, ast.Try) for c in chain) and "optional" in line.partition("#")[2]:
            continue
        found.append((node.lineno, line.strip()))
    return found


def misplaced_imports(modules: dict[str, Path]) -> list[str]:
    return [f"{module}:{lineno}: {line}"
            for module, path in sorted(modules.items()) if module not in CLI_MODULES
            for lineno, line in body_imports(path)]


def init_problems(modules: dict[str, Path]) -> list[str]:
    out = []
    for module, path in sorted(modules.items()):
        if path.name != "__init__.py":
            continue
        body = ast.parse(path.read_text()).body
        docstring = bool(body) and isinstance(body[0], ast.Expr) and isinstance(
            body[0].value, ast.Constant) and isinstance(body[0].value.value, str)
        rest = [n for n in body[1:]
                if not (isinstance(n, ast.Assign) and [ast.unparse(t) for t in n.targets]
                        == ["__version__"] and module == "recstack")]
        if not docstring or rest:
            out.append(f"{module}: a package __init__ holds a docstring only")
    return out


def test_imports_are_at_module_top_outside_the_cli_modules() -> None:
    assert misplaced_imports(project_modules()) == []


def test_every_package_init_is_a_docstring() -> None:
    modules = project_modules()
    assert {"app.stack", "pipelines", "training", "simulator"} <= set(modules)
    assert init_problems(modules) == []


def test_help_imports_only_the_cli_modules_of_the_project() -> None:
    from tests.unit.test_quiet import _python

    done = _python("""
        import json, sys
        import app.cli
        print(json.dumps(sorted(sys.modules)))
    """)
    assert done.returncode == 0, done.stderr
    modules = project_modules()
    packages = {m for m, path in modules.items() if path.name == "__init__.py"}
    loaded = {m for m in json.loads(done.stdout) if m in modules}
    assert "app.cli" in loaded
    assert loaded - CLI_MODULES - packages == {"recstack.logs", "recstack.settings"}


def test_the_checks_see_a_body_import_and_a_reexporting_init(tmp_path: Path) -> None:
    modules = write_tree(tmp_path, {
        "serving/__init__.py": '"""Doc."""\nfrom serving.a import f\n',
        "serving/a.py": ("def f():\n    import json\n    try:\n        import tabulate  # optional: x\n"
                         "    except ImportError:\n        pass\n"),
        "pipelines/__init__.py": '"""Doc."""\n',
        "pipelines/cli.py": "def verb():\n    import apache_beam\n",
    })
    assert misplaced_imports(modules) == ["serving.a:2: import json"]
    assert init_problems(modules) == ["serving: a package __init__ holds a docstring only"]
