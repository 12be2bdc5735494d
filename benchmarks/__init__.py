"""Benchmarks of the node against its baselines: `python -m benchmarks` (see __main__).

generation   Simple task through the node vs a plain llama_cpp script
overhead     no-model task latency vs a bare gossipsub round trip
concurrency  1/2/4/8 simultaneous tasks vs sequential and vs llama-server
throughput   tiny tasks/s and CPU per gossip message vs the bare echo
footprint    startup time and RSS vs the plain script
"""
