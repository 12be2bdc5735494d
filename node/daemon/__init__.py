"""The daemon: the node process that takes tasks from gossip and publishes their results.
Imports wire, p2p and ops (and workflows, models, config); never publisher, gateway or cli.

    server.py           NodeServer: the lifecycle (startup, serve, shutdown) and the gossip consumers
    intake.py           Intake: does this node take a task? (pure decisions, section 4)
    admission.py        Executor: per-model capacity and queue; admits a task or refuses it (busy)
    runner.py           TaskRunner: runs one admitted task on its model's execution process -> result
    execution/          one child process per model: the workflow engine and the llama.cpp runtime
    outbox.py           ResultOutbox: publishes results, keeps them in the journal until sent
    journal.py          Journal: SQLite record of every task's state (survives a crash)
    recovery.py         start-up recovery of what a crash left in the journal
    heartbeat.py        Heartbeat: periodic signed heartbeats (models, capacity, speed)
    monitor.py          NodeMonitor: samples state for metrics, health, status and systemd
    supervisor.py       Supervisor: restarts background loops with backoff; a dead one is fatal
    failures.py         RecentFailures: failures in a sliding window and their backoff (supervisor, execution pool)
    model_setup.py      builds one configured model (registry -> backend -> benchmark)
    workflow_setup.py   maps settings onto the workflow engine's tool and model options
    remote_health.py    health of the remote engines this node fronts
"""
