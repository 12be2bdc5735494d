"""`python -m node.execution --fd N --parent-pid P [--sandbox JSON]`: the execution process's launcher.

It closes the descriptors it inherited but its socket to the daemon, and confines the process (sandbox.py)
before anything heavy is imported, while the process has one
thread: a confinement covers the thread that applies it and the threads it starts, and the imports of
numpy and llama.cpp start threads. Then process.py's `main` serves the daemon.
"""

from __future__ import annotations

import argparse

from node.execution.privileges import close_inherited_descriptors
from node.execution.protocol import SandboxPolicy
from node.execution.sandbox import confine

_SOCKET = argparse.ArgumentParser(add_help=False)
_SOCKET.add_argument("--fd", type=int, required=True)  # the daemon's socket, kept (process.py reads it)


def main(argv: list[str] | None = None) -> int:
    """Close what was inherited, confine, then serve (process.py)."""
    parser = argparse.ArgumentParser(prog="python -m node.execution", add_help=False)
    parser.add_argument("--sandbox", type=SandboxPolicy.model_validate_json, default=None)
    args, rest = parser.parse_known_args(argv)
    socket_fd, _ = _SOCKET.parse_known_args(rest)
    close_inherited_descriptors(keep=socket_fd.fd)
    outcome = confine(args.sandbox)
    from node.execution import process  # after the sandbox: its imports start threads

    return process.main(rest, sandbox=outcome)


if __name__ == "__main__":
    raise SystemExit(main())
