"""Execution processes: one child process per model runs the workflow engine and that
model's batched llama.cpp runtime, so a native crash or a runaway workflow costs one
process, never the daemon.

protocol.py: the IPC messages (pydantic, one JSON object per line over a socketpair).
process.py:  the child's main loop (`python -m node.daemon.execution.process --fd N`).
delta_coalescer.py: a streaming task's text deltas, gathered into fewer messages before they cross.
memory_limits.py: the child's RSS and address-space limits, derived from its model when unset.
handle.py:   the daemon's view of one child: spawn, send, receive, kill, exit status.
pool.py:     the daemon's supervisor of all children: start, watch, restart with backoff.
stall.py:    the stall watchdog: a decode loop that stops progressing, its bound and its suspects.
"""
