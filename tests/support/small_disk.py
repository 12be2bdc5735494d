"""A 1 MiB filesystem for the full-disk tests (a tmpfs; mounting one needs root)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def small_disk(parent: Path) -> Iterator[Path | None]:
    """A 1 MiB tmpfs mounted under `parent` when this process may mount one, else None
    (the tests then fill the disk another way: SQLite's page limit fails the same way)."""
    mount_point = parent / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
