"""What the node keeps of tasks and secrets stays the operator's: owner-only files, no key or core dump in
the execution process (it runs workflows and llama.cpp)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from node.daemon.ledger import Ledger
from node.daemon.processes.child_inputs import child_environment
from node.gateway.database import open_database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ledger_and_the_gateway_database_are_owner_only_in_a_directory_others_can_read(tmp_path: Path) -> None:
    shared = tmp_path / "data"
    shared.mkdir(mode=0o755)  # made before, by an operator or a volume
    old = os.umask(0o022)
    try:
        Ledger.open(shared / "ledger.sqlite3", keep_days=1, max_rows=10).close()
        open_database(shared / "gateway.sqlite3", "CREATE TABLE IF NOT EXISTS t (x)").close()
    finally:
        os.umask(old)
    assert mode(shared / "ledger.sqlite3") == 0o600  # was 0644: task ids, publishers, error texts
    assert mode(shared / "gateway.sqlite3") == 0o600  # was 0644: clients' results in plaintext


def test_the_execution_process_gets_no_identity_key_and_dumps_no_core() -> None:
    env = child_environment({"COMPUTE_NODE_SECRET_KEY": "11" * 32, "COMPUTE_NODE_N_CTX": "512", "PATH": "/bin"})
    assert env == {"PATH": "/bin"}  # its settings come in `configure`
    limits = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource; from node.execution.process import no_core_dumps; no_core_dumps(); "
            "print(resource.getrlimit(resource.RLIMIT_CORE))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert limits.stdout.strip() == "(0, 0)"  # a core held prompts, tool_secrets and the key (442 MB, measured)
