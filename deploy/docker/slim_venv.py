"""Drops what llama-cpp-python's wheel installs twice from the image's virtual environment.

A wheel cannot hold symlinks, so the wheel ships each library three times
(libllama.so, .so.0, .so.0.5.0) in `llama_cpp/lib`, and once more, with CMake and
pkg-config files, in `site-packages/lib`, which nothing loads: `llama_cpp` loads
its libraries from its own `lib/`, and they find each other there ($ORIGIN).
This keeps one file per library (the others become symlinks to it) and removes
the second copy. Run by the Dockerfile's builder stage:
    python slim_venv.py /opt/venv
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

PACKAGE = "llama_cpp"
DIST_INFO = "llama_cpp_python-*.dist-info"


def site_packages(venv: Path) -> Path:
    """The venv's site-packages (lib/python3.X/site-packages)."""
    [found] = venv.glob("lib/python3*/site-packages")
    return found


def remove_files_outside_the_package(site: Path) -> int:
    """Deletes the files the wheel's RECORD lists outside llama_cpp/ and its dist-info; returns bytes freed."""
    [dist_info] = site.glob(DIST_INFO)
    freed = 0
    for line in (dist_info / "RECORD").read_text().splitlines():
        name = line.split(",")[0]
        top = name.split("/")[0]
        path = site / name
        if top in (PACKAGE, dist_info.name) or not path.is_file() or path.is_symlink():
            continue
        freed += path.stat().st_size
        path.unlink()
        parent = path.parent
        while parent != site and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return freed


def link_duplicate_libraries(lib_dir: Path) -> int:
    """Replaces each library file identical to a longer-named one by a symlink to it; returns bytes freed."""
    by_content: dict[str, str] = {}
    freed = 0
    for lib in sorted(lib_dir.glob("*.so*"), key=lambda p: (-len(p.name), p.name)):
        if lib.is_symlink():
            continue
        digest = hashlib.sha256(lib.read_bytes()).hexdigest()
        if digest in by_content:
            freed += lib.stat().st_size
            lib.unlink()
            lib.symlink_to(by_content[digest])
        else:
            by_content[digest] = lib.name
    return freed


def main(venv: str) -> None:
    site = site_packages(Path(venv))
    freed = remove_files_outside_the_package(site) + link_duplicate_libraries(site / PACKAGE / "lib")
    print(f"slim_venv: {freed / 1e6:.1f} MB of duplicate llama.cpp libraries removed")


if __name__ == "__main__":
    main(sys.argv[1])
