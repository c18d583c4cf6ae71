"""The package's import graph: no circles, no arrows that run back up, no private names
imported across modules.

The graph is read from the source (``ast``): every ``import`` a module runs, at the top or
inside a function, except those under ``if TYPE_CHECKING:`` (annotations only). A function-local
import still makes an arrow: it only hides a circle until the function runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nas_asc"

# (importer prefix, imported prefixes it must not reach): the layers below may not import the
# layers above them
_NOT_ABOVE = {
    "nas_asc.study": ("nas_asc.search", "nas_asc.report", "nas_asc.export", "nas_asc.cli"),
    "nas_asc.search": (
        "nas_asc.report",
        "nas_asc.export",
        "nas_asc.cli",
        "nas_asc.evaluate",
        "nas_asc.finetune",
    ),
    "nas_asc.complexity": ("nas_asc.export", "nas_asc.search", "nas_asc.report"),
    "nas_asc.deploy": ("nas_asc.export", "nas_asc.search", "nas_asc.report", "nas_asc.cli"),
    "nas_asc.models": ("nas_asc.search", "nas_asc.train", "nas_asc.export", "nas_asc.report"),
    "nas_asc.data": ("nas_asc.search", "nas_asc.train", "nas_asc.export", "nas_asc.report"),
}


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """``(module imported, name taken from it or None)`` for each import ``name`` runs."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule, None) if submodule in modules else (source, alias.name))
    root = next(iter(modules)).split(".")[0]
    return [(m, n) for m, n in found if m == root or m.startswith(root + ".")]


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """The arrows between the modules of package ``root`` and the private names imported
    across modules (``(importer, module, name)``)."""
    modules = _modules(root)
    arrows: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        for target, taken in _imports(name, path, modules):
            if target in modules and target != name:
                arrows[name].add(target)
            if taken and taken.startswith("_") and not taken.startswith("__") and target != name:
                private.append((name, target, taken))
    return arrows, private


def circles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(arrows.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(arrows):
        if v not in index:
            visit(v)
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE)


def test_the_reader_finds_a_circle_an_upward_arrow_and_a_private_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.high import c\n"
        "def f():\n    from pkg.low.b import g\n"
    )
    (pkg / "low" / "b.py").write_text("from . import a\nfrom pkg.high import _secret\n")
    (pkg / "high.py").write_text("_secret = 1\n")
    arrows, private = import_graph(pkg)
    assert arrows["pkg.low.a"] == {"pkg.low.b"}  # the TYPE_CHECKING import is no arrow
    assert arrows["pkg.low.b"] == {"pkg.low.a", "pkg.high"}
    assert circles(arrows) == [["pkg.low.a", "pkg.low.b"]]
    assert private == [("pkg.low.b", "pkg.high", "_secret")]


def test_no_import_circles(graph):
    arrows, _ = graph
    assert circles(arrows) == []


def test_no_private_name_is_imported_across_modules(graph):
    _, private = graph
    assert private == []


#: Optuna's internals: private modules, a study's storage and ids, the cache's backend, the
#: artifact store's folder (``self._x`` is an object's own attribute, not Optuna's)
_OPTUNA_INTERNALS = re.compile(
    r"optuna\._|storages\._|(?<!self)\._(storage|study_id|trial_id|backend|base_path)\b"
    r"|[\"']_(backend|base_path)[\"']"
)


def code_lines_matching(pattern: re.Pattern, root: Path, outside: Path) -> list[str]:
    """``file:line: text`` of every line of code (comments cut) in ``root``'s package, except in
    ``outside``, that ``pattern`` matches."""
    return [
        f"{path.relative_to(root.parent)}:{number}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        if path != outside
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line.split("#")[0])
    ]


def test_optuna_internals_are_read_in_the_storage_module_only():
    storage = PACKAGE / "study" / "storage.py"
    assert code_lines_matching(_OPTUNA_INTERNALS, PACKAGE, storage) == []
    # the pattern does find them where they are
    assert code_lines_matching(_OPTUNA_INTERNALS, PACKAGE, PACKAGE / "cli.py")


#: where ``print`` may be called: the command lines (the stages speak through a Reporter)
_PRINTERS = {("nas_asc/cli.py", None), ("nas_asc/fidelity/__init__.py", "main")}


def print_calls(root: Path) -> list[tuple[str, str | None, int]]:
    """Every ``print(...)`` call in ``root``'s package: (file, enclosing top-level function,
    line). Text inside strings (the generated files of the 2025 package) is not code."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for top in tree.body:
            owner = top.name if isinstance(top, ast.FunctionDef | ast.ClassDef) else None
            for node in ast.walk(top):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "print"
                ):
                    found.append((str(path.relative_to(root.parent)), owner, node.lineno))
    return found


def test_only_the_command_lines_print():
    calls = print_calls(PACKAGE)
    stray = [
        (f, owner, line)
        for f, owner, line in calls
        if (f, None) not in _PRINTERS and (f, owner) not in _PRINTERS
    ]
    assert stray == []
    assert any(f == "nas_asc/cli.py" for f, _, _ in calls)  # the reader does find prints


def test_a_studys_own_attributes_are_read_and_written_in_its_record_only():
    """``study.user_attrs`` / ``study.set_user_attr``: only nas_asc/study/record.py (a trial's
    attributes are the trial's own, read where they are used)."""
    pattern = re.compile(r"\bstudy\.(user_attrs|set_user_attr)\b")
    record = PACKAGE / "study" / "record.py"
    assert code_lines_matching(pattern, PACKAGE, record) == []
    assert code_lines_matching(pattern, PACKAGE, PACKAGE / "cli.py")  # found where they are


def test_only_the_cli_puts_the_pipeline_to_use(graph):
    arrows, _ = graph
    users = sorted(
        importer
        for importer, targets in arrows.items()
        if not _within(importer, "nas_asc.pipeline")
        and any(_within(t, "nas_asc.pipeline") for t in targets)
    )
    assert users == ["nas_asc.cli"]


@pytest.mark.parametrize("layer", sorted(_NOT_ABOVE))
def test_no_arrow_runs_back_up(graph, layer):
    arrows, _ = graph
    upward = sorted(
        (importer, target)
        for importer, targets in arrows.items()
        if _within(importer, layer)
        for target in targets
        if any(_within(target, above) for above in _NOT_ABOVE[layer])
    )
    assert upward == []


def test_the_files_handed_out_first_exist():
    from conftest import LONGEST_FIRST  # tests/conftest.py: the order pytest-xdist hands them out

    here = Path(__file__).parent
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    assert [name for name in LONGEST_FIRST if not (here / name).is_file()] == []
