"""`compute-node doctor`: checks why a node would not run or get work, each with a fix.

report.py    Check (name, status, detail, fix), printing and the exit status
local.py     this machine: the llama.cpp runtime, data dir and key, ports, model files, memory
network.py   the network: bootstrap peers, public addresses, clock skew, remote engines
run.py       run_doctor: the checks in order (each may be skipped), with the readings they use
"""
