"""The verification benchmark's records (a cell: one thread count and parallel width) and the notes they give."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from node.publisher.verification import ProofChecker

CHECK_TOKENS = 24  # catch-rate answers stay short so that n results per cell fit the run
# Shorter answers, as the first k tokens of each result: what an answer that ended there would show.
PREFIX_LENGTHS = (2, 4, 8, 16)


@dataclass
class Kind:
    """One kind of result in one cell: how many were checked, how many failed, and their numbers."""

    checked: int = 0
    failed: list[str] = field(default_factory=list)
    deviations: list[float] = field(default_factory=list)  # |claimed - re-scored| per position
    biases: list[float] = field(default_factory=list)  # mean(claimed - re-scored) per result
    positions: list[int] = field(default_factory=list)  # positions per result (its tokens)
    # max over k of mean bias of the first k positions x sqrt(k), per result: the spread short answers show
    prefix_peaks: list[float] = field(default_factory=list)
    # per PREFIX_LENGTHS: the first k tokens checked as a result, failed with the checker's rule and with
    # a flat mean tolerance (no widening for few positions)
    prefix_checked: list[int] = field(default_factory=lambda: [0] * len(PREFIX_LENGTHS))
    prefix_failed: list[int] = field(default_factory=lambda: [0] * len(PREFIX_LENGTHS))
    prefix_failed_flat: list[int] = field(default_factory=lambda: [0] * len(PREFIX_LENGTHS))


@dataclass
class Cell:
    threads: int
    parallel: int
    kinds: dict[str, Kind] = field(
        default_factory=lambda: {k: Kind() for k in ("honest", "swapped", "fixed", "relabelled")}
    )
    scorer: str = ""  # the model file the checks re-scored with (the model's own, or its bf16 copy)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        """A cell written by `--dump`."""
        kinds = {name: Kind(**kind) for name, kind in data["kinds"].items()}
        return cls(data["threads"], data["parallel"], kinds, data.get("scorer", ""))

    @property
    def label(self) -> str:
        return f"{self.threads}t/{self.parallel}p"


def quantiles(values: list[float]) -> str:
    a = np.array(values)
    return (
        f"p50 {np.quantile(a, 0.5):.4f}, p99 {np.quantile(a, 0.99):.4f}, p99.9 {np.quantile(a, 0.999):.4f}, "
        f"max {a.max():.4f} (n={a.size})"
    )


def spread(values: list[float]) -> str:
    b = np.array(values)
    return f"min {b.min():.4f}, p1 {np.quantile(b, 0.01):.4f}, median {np.median(b):.4f}, p99 {np.quantile(b, 0.99):.4f}, max {b.max():.4f}"


RULES = {  # words of each rule's message in node/publisher/verification.py
    "position tolerance": "claimed log-probability",
    "mean bias": "nats above the model's",
    "not the best token at temperature 0": "not the model's best token",
    "outside top-k/min-p": "outside the sampler's",
    "text": "result text",
}


def _rules(failures: list[str]) -> str:
    """How many failures each rule of the checker named (the first rule broken)."""
    counts = {rule: sum(words in f for f in failures) for rule, words in RULES.items()}
    return ", ".join(f"{rule} {n}" for rule, n in counts.items() if n) or "none"


def _scaled(kind: Kind) -> list[float]:
    """Each result's mean bias x sqrt(its positions): the spread the mean tolerance's `mean_spread` bounds."""
    return [b * float(np.sqrt(n)) for b, n in zip(kind.biases, kind.positions, strict=True)]


def _prefix_rates(kinds: dict[str, Kind]) -> str:
    """Per prefix length: honest flagged and swapped caught, with the checker's rule and with a flat mean tolerance."""
    parts = []
    for i, k in enumerate(PREFIX_LENGTHS):
        h, w = kinds["honest"], kinds["swapped"]
        parts.append(
            f"k={k}: honest flagged {h.prefix_failed[i]}/{h.prefix_checked[i]} (flat {h.prefix_failed_flat[i]}), "
            f"swapped caught {w.prefix_failed[i]}/{w.prefix_checked[i]} (flat {w.prefix_failed_flat[i]})"
        )
    return "; ".join(parts)


def cell_notes(cells: list[Cell]) -> list[str]:
    checker = ProofChecker()
    notes = [
        f"up to {max(c.kinds['honest'].checked for c in cells)} distinct prompts per cell, answers of at most {CHECK_TOKENS} tokens; tolerances: "
        f"{checker.position_tolerance} nats per position; mean bias max({checker.mean_tolerance}, "
        f"{checker.mean_spread} / sqrt(positions)) nats."
    ]
    for cell in cells:
        k = cell.kinds
        notes.append(
            f"{cell.label} (re-scored with {cell.scorer or 'the model file'}): "
            f"honest flagged {len(k['honest'].failed)} of {k['honest'].checked}; "
            + "; ".join(
                f"{name} caught {len(k[name].failed)} of {k[name].checked}"
                for name in ("swapped", "fixed", "relabelled")
            )
        )
        notes.append(f"{cell.label} honest |claimed - re-scored| per position: {quantiles(k['honest'].deviations)}")
        for name in ("honest", "swapped"):
            notes.append(f"{cell.label} {name} mean bias per result: {spread(k[name].biases)}")
        if k["honest"].positions:  # dumps from before positions were kept lack them
            notes.append(
                f"{cell.label} honest positions per result: {spread([float(n) for n in k['honest'].positions])}"
            )
            notes.append(f"{cell.label} honest mean bias x sqrt(positions): {spread(_scaled(k['honest']))}")
            notes.append(
                f"{cell.label} honest max over k of (mean bias of the first k) x sqrt(k): {spread(k['honest'].prefix_peaks)}"
            )
            notes.append(f"{cell.label} the first k tokens as a result, " + _prefix_rates(k))
        for name in ("swapped", "fixed"):
            notes.append(f"{cell.label} {name} caught by: {_rules(k[name].failed)}")
        if k["honest"].failed:
            notes.append(f"{cell.label} honest flagged, first: {k['honest'].failed[0]}")
        missed = k["swapped"].checked - len(k["swapped"].failed)
        if missed:
            notes.append(f"{cell.label}: {missed} swapped results passed")
    return notes
