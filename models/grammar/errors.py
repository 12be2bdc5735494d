"""The error every refused constraint raises."""

from __future__ import annotations

from models.requests import ModelError


class GrammarError(ModelError):
    """A schema or regex cannot be turned into a grammar within this node's limits; the message says why.

    Deterministic: the same constraint fails the same way on every node (workflows turn it into `Invalid prompt: `).
    """
