"""Benchmarks of the node against its baselines: `python -m benchmarks` (see __main__).

generation.py     Simple task through the node vs a plain llama_cpp script
overhead.py       no-model task latency vs a bare gossipsub round trip
concurrency.py    1..16 simultaneous tasks vs sequential and vs llama-server
throughput.py     tiny tasks/s and CPU per gossip message vs the bare echo
footprint.py      startup time and RSS vs the plain script
prefix.py         a second step that extends the first one's prompt: prefix reuse on the runtime
remote.py         a node fronting llama-server (an OpenAI-compatible engine) vs that engine alone
ipc.py            what the daemon <-> execution-process boundary costs per task
grammar.py        what a schema (constrained decoding) costs per generated token
kv_cache.py       KV cache types f16/q8_0/q4_0 and flash attention: memory, speed, logprob drift
direct_decode.py  the event loop's lag while a burst of 256 KiB direct first frames is checked, off it vs on it
soak.py           `--only soak` (opt-in): RSS under a long stream of tiny tasks, each from a new key
verification.py   honest log-probability spread, catch rates of dishonest nodes, re-scoring cost
                  (verification_cells.py: a cell's records and notes; verification_plot.py draws its
                  distributions in verification.png; verification_replay.py measures whether
                  replaying the seeded sampler would close the relabelled-token gap)

The cluster harness (`python -m benchmarks cluster`: N nodes and P publishers on loopback,
faults, cost model): cluster.py (command line, scenarios), cluster_nodes.py (the node
processes and their /proc readings), cluster_publisher.py (a publisher process),
cluster_run.py (one batch, its faults and measurements), cluster_report.py (table,
plots), cluster_model.py (the per-node cost model of docs/SCALING.md, fitted).

Shared parts: options.py (BenchOptions, the publisher helper), workloads.py (prompts,
workflows), peers.py (a node and peers in their own processes), echo_peer.py,
raw_worker.py, kv_worker.py (one KV-cache configuration in its own process) and
llama_server.py (the baselines), stats.py, machine.py, report.py (the RESULTS.md table).
"""
