"""The `compute-node` command (and `python -m node.cli`): the top of the package graph.

main.py      the parser and `main`: start, run-task, identity, and the subcommands below
settings.py  command-line flags generated from a settings class (one flag per setting)
models.py    `compute-node models ...`: list, pull, remove and benchmark models
gateway.py   `compute-node gateway`
operate.py   `compute-node pause`, `resume`, `ledger` and `doctor`
doctor/      the doctor's checks (machine, config, network), each with a fix
"""

from node.cli.main import main

__all__ = ["main"]
