"""The daemon's side of the execution processes (node/execution/): one child process per model,
spawned, fed and watched from here; the daemon never loads a model itself.

handle.py:   the daemon's view of one execution process: spawn, send, receive, kill, exit status.
exits.py:    how a process's end is named: the errors its tasks and its start get.
child_spawn.py:    how it is spawned: a clean interpreter on one end of a socketpair, its stderr on a pipe, its own session.
child_inputs.py:   what it is given: the settings (less the identity key and tool secrets) and the environment variables it may use.
tool_egress.py:    its tools' HTTP requests, made here under the egress policy (it has no network of its own).
tool_settings.py:  the tools' settings: the operator's in full for those requests, and what it is told of them.
strays.py:         what its lines cost without cause (answers nobody waits for, junk parsed), when it is broken.
pool.py:     the supervisor of all of them: start, route tasks, watch, restart with backoff.
early.py:    the first model's process, spawned before the daemon's own imports (node/daemon/launch.py), and
             `execution_process`, which makes every process from what child_inputs.py lets it have.
stall.py:    the stall watchdog: a decode loop that stops progressing, its bound and its suspects.
sandbox_policy.py: what an execution process may not touch (the data dir, the key and config files).
scratch.py:        its scratch folder, the one it may write: bounded, removed after it.
bounds.py:         what the pool bounds besides its RSS: threads, its main thread, the scratch folder, files in no folder.
child_output.py:   its stderr, relayed into the daemon's log with the process named on every line.
speed_keeper.py:   which speeds it measures the daemon keeps in its cache (none reported after a task), and which it advertises.
"""
