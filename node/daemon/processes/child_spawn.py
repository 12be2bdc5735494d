"""Spawning one execution process: a clean interpreter (`python -P -m node.execution`) on one end of a socketpair.

The process gets its end of the socket as a passed descriptor, its stderr on a pipe of ours (relayed into the
daemon's log by child_output.py), the environment child_inputs.py lets it have, and the sandbox policy it confines
itself by, its scratch folder writable; it runs in a session of its own. handle.py talks to it from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.daemon.processes.child_inputs import child_environment, launch_environment
from node.execution.protocol import SandboxPolicy

_PROJECT_ROOT = Path(__file__).resolve().parents[3]  # node/daemon/processes/child_spawn.py -> the project


@dataclass(frozen=True)
class SpawnedChild:
    """A spawned execution process, our end of its socket and the read end of its stderr pipe."""

    process: asyncio.subprocess.Process
    channel: socket.socket
    output: int


async def spawn_child(
    settings: dict[str, Any],
    environment: dict[str, str] | None,
    sandbox: SandboxPolicy | None,
    scratch: Path | None,
) -> SpawnedChild:
    """Spawn the process with `settings` for its launch environment, `environment` as its variables (None: the
    daemon's, less its secrets), confined by `sandbox` (None: not confined) with `scratch` writable. A spawn that
    fails at any step closes what it opened."""
    undo = contextlib.ExitStack()  # what a spawn that fails at any step leaves behind, undone
    with undo:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        undo.callback(parent.close)
        with child:  # the process's end: ours is closed once it has its own
            # A pipe of our own, not asyncio's: a process's `wait()` then waits for its exit alone, never for
            # the pipe's other end, which a process it forked could hold (handle.py's _end_stream_at_exit counts
            # on that).
            output, output_end = os.pipe()
            undo.callback(os.close, output)
            try:
                process = await _exec(child.fileno(), output_end, settings, environment, sandbox, scratch)
            finally:
                os.close(output_end)
        undo.pop_all()  # spawned: the process has them now
    return SpawnedChild(process, parent, output)


async def _exec(
    fd: int,
    stderr: int,
    settings: dict[str, Any],
    environment: dict[str, str] | None,
    policy: SandboxPolicy | None,
    scratch: Path | None,
) -> asyncio.subprocess.Process:
    """Start `python -m node.execution` on the socket `fd`, its stderr to `stderr`, confined by the policy."""
    base = environment if environment is not None else child_environment(os.environ)
    if policy is not None and scratch is not None:
        policy = policy.model_copy(update={"writable": [*policy.writable, str(scratch)]})
    sandbox = () if policy is None else ("--sandbox", policy.model_dump_json())
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",  # no working directory first on sys.path: other processes may write one (/tmp)
        "-m",
        "node.execution",
        "--fd",
        str(fd),
        "--parent-pid",
        str(os.getpid()),
        *sandbox,
        pass_fds=(fd,),
        # Out of the terminal's and the service manager's signal path: Ctrl-C (SIGINT to the foreground
        # group) and a group SIGTERM reach the daemon only, which drains its tasks, then ends this process.
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,  # relayed into the daemon's log, the process named (child_output.py)
        env=launch_environment(base, scratch, settings, _PROJECT_ROOT),
    )
