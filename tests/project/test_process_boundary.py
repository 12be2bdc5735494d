"""The process boundary of ARCHITECTURE.md holds: llama.cpp runs only in the execution process.

The daemon faces the network; a model, its native runtime and the workflow engine's run
live in node/execution/, in a child process of their own. So no module of the daemon's
side (below) imports llama_cpp, the batched runtime, or node.execution beyond the
protocol both sides speak: not directly (anywhere in the file, lazy imports included),
and not through what its imports load when they are imported (module-level imports,
followed through first-party modules and their packages' `__init__`).

The CLI runs the daemon for `compute-node start`, and runs a model in its own process
for `models bench`, `doctor`'s memory check and `run-task --verify` (scorers.py): its
module-level imports are held to the rule, except scorers.py's, whose every use is a
local model; an import inside a function is its command's business, and a module-level
import of scorers.py elsewhere in the CLI is caught through what it loads. (The launcher names
`node.execution` in the child's argv, a string, not an import.)
test_daemon_imports.py checks the same at run time, for what `start` imports.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("node", "workflows", "models", "config")
DAEMON_SIDE = ("node.daemon", "node.p2p", "node.wire", "node.ops", "node.publisher", "node.gateway")
CLI = "node.cli"
CLI_LOCAL_MODEL = ("node.cli.scorers",)  # opens model files in the CLI's own process, imported lazily
# What loads llama.cpp or runs a model: the native library, the batched runtime, the execution process.
FORBIDDEN = ("llama_cpp", "models.batching", "models.decode_loop", "models.llama_open", "node.execution")
ALLOWED_ACROSS = ("node.execution.protocol",)
PACKAGE_MAP_ONLY = "node.execution"  # its __init__ is a docstring: `from node.execution import protocol` is fine


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _forbidden(name: str) -> bool:
    return _within(name, FORBIDDEN) and not _within(name, ALLOWED_ACROSS) and name != PACKAGE_MAP_ONLY


def _named(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif node.module and node.level == 0:
        yield node.module
        yield from (f"{node.module}.{alias.name}" for alias in node.names)  # `from models import llama_open`


@functools.cache
def imports(path: Path, *, module_level_only: bool) -> frozenset[str]:
    """The names a file imports: all of them, or those run when the module is imported (not in a def,
    not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        item = pending.pop()
        if isinstance(item, ast.Import | ast.ImportFrom):
            found.update(_named(item))
        for child in ast.iter_child_nodes(item):
            if module_level_only and (
                isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or _type_checking_only(child)
            ):
                continue
            pending.append(child)
    return frozenset(found)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _files() -> dict[str, Path]:
    return {_module_name(p): p for top in FIRST_PARTY for p in (ROOT / top).rglob("*.py")}


def _loaded_by(name: str, files: dict[str, Path]) -> list[str]:
    """The first-party modules importing `name` runs: the module (if it is one) and its packages."""
    parts = name.split(".")
    return [prefix for i in range(1, len(parts) + 1) if (prefix := ".".join(parts[:i])) in files]


def import_time_closure(start: str, files: dict[str, Path]) -> dict[str, str]:
    """Every name importing `start` imports, each with the module that imports it."""
    seen: dict[str, str] = {}
    visited = {start}
    pending = [start]
    while pending:
        module = pending.pop()
        for name in imports(files[module], module_level_only=True):
            seen.setdefault(name, module)
            for loaded in _loaded_by(name, files):
                if loaded not in visited:
                    visited.add(loaded)
                    pending.append(loaded)
    return seen


def boundary_violations(files: dict[str, Path]) -> list[str]:
    """Each import of the daemon's side (and the CLI's module level) that crosses into llama.cpp."""
    violations = []
    for module, path in sorted(files.items()):
        if _within(module, DAEMON_SIDE):
            direct = imports(path, module_level_only=False)
        elif _within(module, (CLI,)) and module not in CLI_LOCAL_MODEL:
            direct = imports(path, module_level_only=True)
        else:
            continue
        violations += [f"{module} imports {name}" for name in sorted(direct) if _forbidden(name)]
        closure = import_time_closure(module, files)
        violations += [
            f"{module} loads {name} (imported by {via})"
            for name, via in sorted(closure.items())
            if _forbidden(name) and via != module
        ]
    return violations


def test_no_daemon_module_loads_llama_cpp_or_the_execution_process() -> None:
    files = _files()
    assert sum(_within(name, DAEMON_SIDE) for name in files) > 50  # the check sees the daemon's side
    assert boundary_violations(files) == []


def test_the_check_catches_an_import_of_llama_cpp_in_the_daemon(tmp_path: Path) -> None:
    files = _files()
    for case, (module, added) in enumerate(
        [
            ("node.daemon.runner", "import llama_cpp\n"),
            ("node.daemon.intake", "def later() -> None:\n    from node.execution import model_setup\n"),
            ("node.daemon.build", "from node.execution.task_host import TaskHost\n"),
            ("node.daemon.build", "from node.execution import memory_limits\n"),
            ("node.cli.main", "from models.decode_loop import DecodeLoop\n"),
            ("node.cli.main", "from node.cli.scorers import LocalScorers\n"),  # at module level: loads llama.cpp
            # Through another module: the daemon imports one that, at import time, imports llama.cpp.
            ("workflows.options", "from models.llama_open import open_vocab\n"),
        ]
    ):
        changed = tmp_path / f"{case}-{module}.py"
        changed.write_text(files[module].read_text() + added)
        violations = boundary_violations({**files, module: changed})
        assert violations, f"{added!r} in {module} went unseen"
    # An import that stays on its side is not a violation.
    changed = tmp_path / "allowed-node.daemon.runner.py"
    changed.write_text(files["node.daemon.runner"].read_text() + "from node.execution import protocol\n")
    assert boundary_violations({**files, "node.daemon.runner": changed}) == []
