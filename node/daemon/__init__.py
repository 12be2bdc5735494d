"""The daemon: the node process that accepts tasks (gossip or direct streams) and sends their results.
Imports wire, p2p and ops (and workflows, models, config); never publisher, gateway or cli; of the
execution process (node/execution/) only its protocol, and nothing that loads llama.cpp.

    launch.py           `compute-node start`: spawns the first execution process, then imports and runs the server
    stop_signals.py     the signals that stop a node; EarlyStops: those that come before the server's handlers, kept for it
    server.py           NodeServer: the lifecycle (startup, serve, shutdown); RunningNode: what startup opened
    build.py            build_parts -> NodeParts: the parts made from the settings and wired together
    intake.py           TaskIntake: where a task enters: decide -> journal -> admit (or answer busy)
    direct.py           DirectIntake: a task on a direct-delivery stream: check, intake, answer at once
    frame_checks.py     FrameChecks: a direct first frame's checks (decode, signature) in a worker thread, in order
    routes.py           DirectRoutes: streams of accepted direct tasks, waiting for their results
    acceptance.py       Acceptance: does this node accept a task? (pure rules: allow-list, picked, deadline...)
    admission.py        Admission: per-model capacity and queue; admits an AcceptedTask or answers busy
    runner.py           TaskRunner: runs one accepted task on its model's execution process -> result
    rerun_gate.py       RerunGate: a stall or crash suspect's rerun runs alone on its model
    processes/          the execution processes (node/execution/), one per model: spawn, route, watch, restart
    outbox.py           ResultOutbox: sends results (on their stream, else gossip), keeps them in the journal until sent
    unjournalled.py     UnjournalledResults: results a failing journal (full disk) refused, held until it takes them
    journal.py          Journal: SQLite record of every task's state (survives a crash; bounded by what is owed)
    journal_file.py     the journal's SQLite file: schema, opening (WAL, version), rows as JournalEntry
    recovery.py         start-up recovery of what a crash left in the journal
    heartbeat.py        Heartbeat: periodic signed heartbeats (models, capacity, speed)
    monitor.py          NodeMonitor: samples state for metrics, health, status and systemd
    clock_watch.py      ClockWatch: every message rejected for its time, none accepted: this machine's clock is wrong
    supervisor.py       Supervisor: restarts background loops with backoff; a dead one is fatal
    failures.py         RecentFailures: failures in a sliding window and their backoff (supervisor, execution pool)
    remote_health.py    health of the remote engines this node fronts
    pause.py            PauseState: the operator's pause (kept in the data dir) and idle_only's
    idle.py             IdleWatch: idle_only: pauses while other processes keep the CPUs (or a GPU) busy
    ledger.py           Ledger: SQLite record of every finished task, bounded by days and rows (`compute-node ledger`)
    ledger_restore.py   restore_lost_rows: at a start, the ledger rows a kill lost, from the journal
"""
