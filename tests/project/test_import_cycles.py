"""No two first-party modules import each other, directly or around a loop, at module level or inside a function.

A cycle means neither module can be read (or imported) without the other; the usual way out
is a lazy import, which hides it. This check counts lazy imports too. Importing `a.b` runs
`a/__init__.py` first, but that implicit edge is not counted: a package's `__init__.py` may
gather what its modules define. Naming a package itself (`from workflows import Simple`) counts.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("node", "workflows", "models", "config")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for top in FIRST_PARTY for path in (ROOT / top).rglob("*.py")}


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The first-party modules `module` imports anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for item in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(item, ast.Import):
            found.update(alias.name for alias in item.names)
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            if item.level:
                anchor = package.rsplit(".", item.level - 1)[0] if item.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in item.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    """Each first-party module and the first-party modules it imports."""
    modules = _modules()
    known = set(modules)
    return {module: _imported(module, path, known) for module, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return list(exc.args[1])
    return []


def test_the_check_sees_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from pkg.b import thing\n")
    (tmp_path / "b.py").write_text("def thing() -> None:\n    from pkg import a\n")
    known = {"pkg", "pkg.a", "pkg.b"}
    graph = {
        "pkg.a": _imported("pkg.a", tmp_path / "a.py", known),
        "pkg.b": _imported("pkg.b", tmp_path / "b.py", known),
    }
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert set(_cycle(graph)) == {"pkg.a", "pkg.b"}
    tree = import_graph()
    assert len(tree) > 100 and "workflows.options" in tree["workflows.egress"]


def test_no_import_cycle_in_the_tree() -> None:
    assert _cycle(import_graph()) == []
