"""The layers of docs/architecture.md, checked from the code's own imports (every import, at
module top or inside a function): the kernel imports no stage and no root module, a stage
imports no other stage (the load tests may import the simulator's users), and no two files
import each other, directly or around a circle."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from recstack.settings import REPO_ROOT

STAGES = ("simulator", "pipelines", "training", "serving", "monitoring", "loadtests")
ROOT_TOPS = ("app",)
SKIPPED = {"tests", "docker", "feature_repo", ".venv", ".git", "build", "var"}
# DESIGN.md section 3: the Locust users are the simulator's.
ALLOWED_CROSS = {("loadtests", "simulator")}


def layer(module: str) -> str | None:
    """'kernel', 'root', a stage's name, or None for a third-party module."""
    top = module.split(".")[0]
    if top == "recstack":
        return "kernel"
    if top in ROOT_TOPS:
        return "root"
    return top if top in STAGES else None


def project_modules(root: Path = REPO_ROOT) -> dict[str, Path]:
    out = {}
    for path in root.glob("**/*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIPPED or rel.parts[0].endswith(".egg-info"):
            continue
        out[".".join(rel.with_suffix("").parts).removesuffix(".__init__")] = path
    return out


def imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return []


def wrong_arrows(modules: dict[str, Path]) -> list[str]:
    rank = {"kernel": 0, "root": 2}
    out = []
    for module, path in modules.items():
        src = layer(module)
        if src is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            for target in imported(node):
                dst = layer(target)
                if dst is None or dst == src:
                    continue
                up = rank.get(dst, 1) > rank.get(src, 1)
                across = dst in STAGES and src in STAGES and (src, dst) not in ALLOWED_CROSS
                if up or across:
                    out.append(f"{module} ({src}) imports {target} ({dst}), line {node.lineno}")
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """File -> the project files it imports, at module top or in a function (``from a import
    b`` counts as ``a.b`` when that is a module, else as ``a``)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for target in imported(node):
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                for dep in subs or [target]:
                    if dep in modules and dep != module:
                        graph[module].add(dep)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def write_tree(root: Path, files: dict[str, str]) -> dict[str, Path]:
    """Writes ``files`` (relative path -> text) under ``root``; returns its project modules."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return project_modules(root)


def test_every_import_points_down() -> None:
    modules = project_modules()
    assert {"recstack.settings", "serving.app", "app.cli", "app.experiments.cli"} <= set(modules)
    assert wrong_arrows(modules) == []


def test_no_circle_between_files() -> None:
    assert circles(import_graph(project_modules())) == []


def test_the_checks_see_a_wrong_arrow_and_a_circle(tmp_path: Path) -> None:
    modules = write_tree(tmp_path, {
        "recstack/settings.py": "from serving.app import create_app\n",
        "serving/a.py": "from serving import b\nimport training.train\n",
        "serving/b.py": "import serving.a\n",
    })
    arrows = wrong_arrows(modules)
    assert any(a.startswith("recstack.settings (kernel) imports serving.app") for a in arrows)
    assert any(a.startswith("serving.a (serving) imports training.train") for a in arrows)
    assert circles(import_graph(modules)) == [["serving.a", "serving.b"]]
