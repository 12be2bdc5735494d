"""The compute node: daemon, P2P layer, publisher client, gateway and CLI (ARCHITECTURE.md has the map).

wire/       the protocol: identity, crypto, envelope, message bodies, topics (imports no other node package)
p2p/        py-libp2p in its own Trio thread behind an asyncio host (imports only wire.topics)
ops/        metrics, the health/status HTTP endpoint, systemd, logging (imports no other node package)
daemon/     the node process: lifecycle, intake, admission, runner, journal, outbox; processes/ watches
            the execution processes
execution/  the execution process, one per model: the workflow engine and llama.cpp (never in the daemon)
publisher/  Client: publish tasks and collect results; the table of known nodes
gateway/    an HTTP API over a publisher Client
cli/        `compute-node`: start, run-task, gateway, models, identity, pause, resume, ledger, doctor, nodes
"""
