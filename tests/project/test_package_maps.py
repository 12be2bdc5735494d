"""Each package's `__init__.py` map (its docstring) names every module and subpackage it holds,
and names no module it does not hold: a newcomer can trust the map."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAPPED = [
    "node",
    "node/wire",
    "node/p2p",
    "node/ops",
    "node/daemon",
    "node/daemon/processes",
    "node/execution",
    "node/publisher",
    "node/gateway",
    "node/gateway/dria_sdk",
    "node/gateway/openai_api",
    "node/cli",
    "workflows",
    "models",
    "models/grammar",
    "config",
    "benchmarks",
]
# A bare file or folder name; one inside a longer path (`node/gateway/settings.py`) is another package's.
_MODULE = re.compile(r"(?<![\w/.])([a-z0-9_]+\.py)\b")
_FOLDER = re.compile(r"(?<![\w/.])([a-z0-9_]+)/")


def _map_of(package: Path) -> str:
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    assert doc, f"{package.relative_to(ROOT)}/__init__.py has no docstring map"
    return doc


@pytest.mark.parametrize("name", MAPPED)
def test_the_map_names_every_module_and_only_real_ones(name: str) -> None:
    package = ROOT / name
    doc = _map_of(package)
    modules = {p.name for p in package.glob("*.py") if not p.name.startswith("__")}
    folders = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    named = set(_MODULE.findall(doc))
    assert modules - named == set(), f"{name}/__init__.py does not name {sorted(modules - named)}"
    assert named - modules == set(), f"{name}/__init__.py names missing modules {sorted(named - modules)}"
    assert folders - set(_FOLDER.findall(doc)) == set(), f"{name}/__init__.py does not name its subpackages"


def test_every_package_with_modules_is_checked() -> None:
    for init in ROOT.glob("*/**/__init__.py"):
        package = init.parent
        if package.parts[len(ROOT.parts)] in ("node", "workflows", "models", "config"):
            modules = [p for p in package.glob("*.py") if not p.name.startswith("__")]
            small = len(modules) <= 4  # a small package's docstring says what it is; no map needed
            assert small or str(package.relative_to(ROOT)) in MAPPED, f"{package} has no checked map"
