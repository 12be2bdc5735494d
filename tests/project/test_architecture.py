"""The package layering of ARCHITECTURE.md holds: every import in node/, workflows/, models/, config/ points down."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Package -> the packages it may import (besides itself and third-party code).
ALLOWED: dict[str, set[str]] = {
    "node.wire": {"node.wire"},
    "node.ops": {"node.ops"},
    "node.p2p": {"node.p2p", "node.wire.topics"},
    "node.publisher": {"node.publisher", "node.wire", "node.p2p", "node.ops"},
    # The daemon speaks to the execution process through its protocol only (test_process_boundary.py).
    "node.daemon": {
        "node.daemon",
        "node.execution.protocol",
        "node.wire",
        "node.p2p",
        "node.ops",
        "workflows",
        "models",
        "config",
    },
    "node.execution": {"node.execution", "node.ops", "workflows", "models", "config"},
    "node.gateway": {"node.gateway", "node.publisher", "node.wire", "node.p2p", "node.ops", "workflows", "config"},
    "node.cli": {"node", "workflows", "models", "config"},
    "workflows": {"workflows", "models"},
    "models": {"models", "config"},
    "config": {"config"},
}
FIRST_PARTY = ("node", "workflows", "models", "config")


def _package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:2]) if parts[0] == "node" else parts[0]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for item in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(item, ast.Import):
            found.update(alias.name for alias in item.names)
        elif isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
            found.add(item.module)
    return {name for name in found if name.split(".")[0] in FIRST_PARTY}


def _allowed(imported: str, allowed: set[str]) -> bool:
    return any(imported == prefix or imported.startswith(prefix + ".") for prefix in allowed)


def test_every_first_party_import_points_down() -> None:
    violations = []
    files = [p for top in FIRST_PARTY for p in (ROOT / top).rglob("*.py")]
    assert len(files) > 50
    for path in files:
        if path.parent == ROOT / "node":
            continue  # node/__init__.py: a docstring only
        allowed = ALLOWED[_package_of(path)]
        violations += [
            f"{path.relative_to(ROOT)} imports {name}" for name in sorted(_imports(path)) if not _allowed(name, allowed)
        ]
    assert violations == []


def test_node_is_subpackages_only() -> None:
    assert sorted(p.name for p in (ROOT / "node").glob("*.py")) == ["__init__.py"]
    assert {p.name for p in (ROOT / "node").iterdir() if (p / "__init__.py").exists()} == {
        "wire", "p2p", "ops", "daemon", "execution", "publisher", "gateway", "cli"
    }  # fmt: skip
