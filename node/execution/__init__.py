"""The execution process: one per model, started by the daemon, running the workflow engine and
that model's batched llama.cpp runtime, so a native crash or a runaway workflow costs one process,
never the daemon. Nothing here runs in the daemon except protocol.py, the messages both sides speak
(tests/project/test_architecture.py and tests/project/test_process_boundary.py hold the boundary).

    protocol.py         the IPC messages (pydantic, one JSON object per line over a socketpair), the
                        sandbox policy, and the deadline texts both sides report
    (__main__)          the launcher, `python -m node.execution --fd N`: confines the process, then
                        runs process.py
    sandbox.py          the confinement (Linux Landlock): no access to the daemon's files or processes
    privileges.py       what Landlock leaves out: capabilities dropped; no new sockets, processes or listeners (seccomp)
    process.py          the main loop: configure, load, ready, then hands tasks to TaskHost until the
                        daemon closes the socket
    task_host.py        TaskHost: runs the daemon's tasks concurrently, under their deadlines, one answer each
    model_setup.py      builds the configured model (registry -> backend -> benchmark)
    idle_benchmark.py   a first start's benchmark, run after `ready` while no task runs
    workflow_setup.py   maps settings onto the workflow engine's options
    tool_channel.py     the tools' HTTP requests, sent to the daemon, which makes them (no network here)
    memory_limits.py    the process's RSS and address-space limits, derived from its model when unset
    delta_coalescer.py  a streaming task's text deltas, gathered into fewer messages before they cross
"""
