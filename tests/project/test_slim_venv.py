"""deploy/docker/slim_venv.py on a venv laid out as llama-cpp-python's wheel installs it.

The layout (three copies of each library in llama_cpp/lib, a fourth set with CMake
files in site-packages/lib) is the one the Docker builder meets; the libraries
here are small files, and a real one is loaded through its symlinks.
"""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def slim_venv() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slim_venv", ROOT / "deploy" / "docker" / "slim_venv.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_venv(root: Path, libraries: dict[str, bytes]) -> Path:
    site = root / "lib" / "python3.11" / "site-packages"
    lib_dir = site / "llama_cpp" / "lib"
    lib_dir.mkdir(parents=True)
    (site / "llama_cpp" / "__init__.py").write_text("")
    dist_info = site / "llama_cpp_python-0.3.36.dist-info"
    dist_info.mkdir()
    record = ["llama_cpp/__init__.py,,"]
    for name, content in libraries.items():
        for copy in (lib_dir / name, site / "lib" / name):
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(content)
        record += [f"llama_cpp/lib/{name},,", f"lib/{name},,"]
    (site / "lib" / "cmake" / "llama").mkdir(parents=True)
    (site / "lib" / "cmake" / "llama" / "llama-config.cmake").write_text("set(x 1)\n")
    record += ["lib/cmake/llama/llama-config.cmake,,", f"{dist_info.name}/RECORD,,"]
    (site / "other.py").write_text("")  # another package's file: not in the RECORD, kept
    (dist_info / "RECORD").write_text("\n".join(record) + "\n")
    return site


def test_one_file_per_library_and_no_second_copy(tmp_path: Path) -> None:
    libraries = {
        "libllama.so": b"llama" * 1000,
        "libllama.so.0": b"llama" * 1000,
        "libllama.so.0.5.0": b"llama" * 1000,
        "libggml.so": b"ggml" * 500,
        "libggml.so.0": b"ggml" * 500,
        "libggml.so.0.25.3": b"ggml" * 500,
        "libggml-cpu.so.0.25.3": b"other build" * 10,  # no twin: stays a file
    }
    site = make_venv(tmp_path / "venv", libraries)
    slim_venv().main(str(tmp_path / "venv"))

    lib_dir = site / "llama_cpp" / "lib"
    assert not (site / "lib").exists()  # the copies, CMake files and their folders
    assert (site / "other.py").exists() and (site / "llama_cpp" / "__init__.py").exists()
    assert sorted(p.name for p in lib_dir.iterdir()) == sorted(libraries)
    links = {p.name: p.readlink().name for p in lib_dir.iterdir() if p.is_symlink()}
    assert links == {
        "libllama.so": "libllama.so.0.5.0",
        "libllama.so.0": "libllama.so.0.5.0",
        "libggml.so": "libggml.so.0.25.3",
        "libggml.so.0": "libggml.so.0.25.3",
    }
    for name, content in libraries.items():
        assert (lib_dir / name).read_bytes() == content


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to make a shared library")
def test_a_real_library_loads_through_its_symlinks(tmp_path: Path) -> None:
    source = tmp_path / "answer.c"
    source.write_text("int answer(void) { return 42; }\n")
    built = tmp_path / "libanswer.so.1.0.0"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libanswer.so.1", "-o", built, source], check=True)
    content = built.read_bytes()
    site = make_venv(tmp_path / "venv", {n: content for n in ("libanswer.so", "libanswer.so.1", built.name)})
    subprocess.run([sys.executable, ROOT / "deploy" / "docker" / "slim_venv.py", tmp_path / "venv"], check=True)

    lib = ctypes.CDLL(str(site / "llama_cpp" / "lib" / "libanswer.so"))
    assert lib.answer() == 42
    assert (site / "llama_cpp" / "lib" / "libanswer.so").is_symlink()
