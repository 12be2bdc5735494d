"""Summaries of measured samples: median with min-max, percentiles, paired ratios.

Every summary refuses to be built from nothing (or from a non-positive rate):
a benchmark that did not measure must fail, not print a made-up number.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class BenchmarkError(Exception):
    """A benchmark could not measure what it reports; the message says what went wrong."""


class Summary(BaseModel):
    """Median and range of one measured quantity."""

    median: float
    low: float
    high: float
    n: int
    unit: str
    p95: float | None = None

    def text(self) -> str:
        """'123 (110-130) unit', with p95 when it was asked for."""
        core = f"{_fmt(self.median)} ({_fmt(self.low)}-{_fmt(self.high)})"
        if self.p95 is not None:
            core = f"p50 {_fmt(self.median)}, p95 {_fmt(self.p95)} (min {_fmt(self.low)}, max {_fmt(self.high)})"
        return f"{core} {self.unit}".strip()


def summarize(samples: Sequence[float], unit: str, *, what: str, percentiles: bool = False) -> Summary:
    """Median/min/max (and p95 when `percentiles`) of positive samples."""
    if not samples:
        raise BenchmarkError(f"{what}: no samples were measured")
    bad = [s for s in samples if not s > 0]
    if bad:
        raise BenchmarkError(f"{what}: {len(bad)} of {len(samples)} samples are not positive ({bad[0]!r})")
    return Summary(
        median=statistics.median(samples),
        low=min(samples),
        high=max(samples),
        n=len(samples),
        unit=unit,
        p95=percentile(samples, 95) if percentiles else None,
    )


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0-100) of a non-empty sample."""
    if not samples:
        raise BenchmarkError("percentile of an empty sample")
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def paired_ratio(node: Sequence[float], baseline: Sequence[float], *, what: str) -> Summary:
    """Per-round node/baseline ratios (rounds ran alternately), summarised."""
    if len(node) != len(baseline):
        raise BenchmarkError(f"{what}: {len(node)} node rounds but {len(baseline)} baseline rounds")
    return summarize([a / b for a, b in zip(node, baseline)], "x", what=what)


async def alternate(
    rounds: int, first: Callable[[int], Awaitable[T]], second: Callable[[int], Awaitable[T]]
) -> tuple[list[T], list[T]]:
    """Run first(i), second(i) for i in range(rounds): A B A B ..., so drift hits both alike."""
    a_results: list[T] = []
    b_results: list[T] = []
    for i in range(rounds):
        a_results.append(await first(i))
        b_results.append(await second(i))
    return a_results, b_results


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"
