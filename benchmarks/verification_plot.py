"""benchmarks/verification.png: the distributions behind the verification tolerances (benchmarks/verification.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from benchmarks.verification_cells import Cell
    from node.publisher.verification import ProofChecker


def draw(cells: list[Cell], checker: ProofChecker, path: Path) -> Path:
    """Left: honest vs swapped |claimed - re-scored| per position; right: mean bias x sqrt(positions) per result."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    bins = np.logspace(-5, 1.5, 60)
    for cell in cells:
        honest = np.maximum(np.array(cell.kinds["honest"].deviations), 1e-5)
        left.hist(honest, bins=bins, histtype="step", label=f"honest {cell.label}")
    for cell in cells[:1]:
        swapped = np.maximum(np.array(cell.kinds["swapped"].deviations), 1e-5)
        left.hist(swapped, bins=bins, histtype="step", linestyle="--", color="black", label=f"swapped {cell.label}")
    left.axvline(checker.position_tolerance, color="red", label="position tolerance")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("|claimed - re-scored| per position (nats; 0 drawn at 1e-5)")
    left.set_ylabel("positions")
    left.legend(fontsize=7)
    edges = np.linspace(-0.5, 3.0, 71)
    for cell in cells:
        if cell.kinds["honest"].prefix_peaks:  # dumps from before the prefixes were kept lack them
            right.hist(cell.kinds["honest"].prefix_peaks, bins=edges, histtype="step", label=f"honest {cell.label}")
    for cell in cells[:1]:
        swapped = cell.kinds["swapped"]
        scaled = [b * np.sqrt(n) for b, n in zip(swapped.biases, swapped.positions, strict=False)]
        right.hist(scaled, bins=edges, histtype="step", linestyle="--", color="black", label=f"swapped {cell.label}")
    right.axvline(checker.mean_spread, color="red", label="mean_spread (tolerance x sqrt(k) below the floor)")
    right.set_xlabel("honest: max over k of mean(first k) x sqrt(k); swapped: mean x sqrt(positions)")
    right.set_ylabel("results")
    right.legend(fontsize=7)
    scorer = cells[0].scorer if cells else ""
    fig.suptitle(
        "Verification: honest vs swapped-model results (SmolLM2-135M Q4_1 vs its Q4_0 requantization)"
        + (f"; re-scored with {'its bf16 copy' if 'bf16' in scorer else 'the model file'}" if scorer else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
