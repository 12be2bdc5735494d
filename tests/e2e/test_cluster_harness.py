"""The cluster harness's quick mode (`python -m benchmarks cluster --quick`), as CI runs it:
3 serving nodes, an observer and a bootstrap node as `compute-node` processes, 2 publisher
processes, 200 one-step `sample` tasks, and kill -9 of one serving node mid-batch.

Every task must complete (through retries), none may reach its caller twice, and the
table, the JSON and the plots must be written. Speeds are reported, never asserted; so
is a result envelope that arrives twice (stream and gossip), which the Client accepts once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nodeproc import ROOT, cli_env

pytestmark = pytest.mark.slow


def test_quick_cluster_run_loses_nothing_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "cluster"
    # Its own process group: if it hangs, its node and publisher processes go with it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "cluster", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=280)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:] + stdout[-2000:]
    batches = json.loads((out / "cluster.json").read_text())
    assert [b["spec"]["label"] for b in batches] == ["kill-N3"]
    kill = batches[0]
    assert kill["completed"] == kill["spec"]["tasks"] == 200
    assert kill["lost"] == 0 and kill["duplicates"] == 0
    # the killed node is gone from the balance; the two survivors both served
    assert len(kill["balance"]) == 2 and min(kill["balance"].values()) > 0
    observer = next(c for c in kill["costs"] if c["role"] == "observer")
    assert observer["tasks"] == 0 and observer["cpu_per_s"] > 0
    table = (out / "cluster.md").read_text()
    assert f"| kill-N3 | {kill['delivery_used']} | 3 | 2 | 200 | 200 | 0 | 0 |" in table
    assert "kill -9 of 1 serving nodes" in table
    for name in ("cluster-scaling.png", "cluster-balance.png", "cluster-model.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
