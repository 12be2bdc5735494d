"""`compute-node models list` and `models bench` as real subprocesses, against a remote entry
served by a scripted engine on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.support.remote_engines import FaultEngine, remote_entry


@pytest.mark.slow
async def test_models_commands_list_and_bench_a_remote_entry(tmp_path: Path) -> None:
    from tests.support.nodeproc import CLI, ROOT, cli_env

    async with FaultEngine() as engine:
        registry = json.dumps({"remote:model": remote_entry(engine.base_url)})
        outputs = []
        for command in (["list"], ["bench", "remote:model"]):
            proc = await asyncio.create_subprocess_exec(
                *CLI,
                "models",
                *command,
                "--registry",
                registry,
                "--data-dir",
                str(tmp_path),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=cli_env(),
                cwd=ROOT,
            )
            out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
            assert proc.returncode == 0, err.decode()
            outputs.append(out.decode())
    listing, bench = outputs
    assert "remote:model" in listing
    assert "remote:model: loading... measuring... prompt" in bench and "generation" in bench
    assert len(engine.requests) == 3  # warm-up, prompt-only, full
    assert json.loads((tmp_path / "speeds.json").read_text())  # the daemon's cache, which the next start reads
