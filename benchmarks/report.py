"""The results table: rows of node vs baseline, rendered as Markdown, saved to RESULTS.md."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from benchmarks.stats import Summary

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
# RESULTS.md from this line on (tables of opt-in benchmarks, profiles written by hand) survives a rewrite.
KEPT_MARKER = "<!-- kept: from here on this file is kept when `python -m benchmarks` rewrites it -->"


class Row(BaseModel):
    """One measured line: the node's number next to its baseline's, and their ratio."""

    metric: str
    node: Summary | None = None
    baseline: Summary | None = None
    baseline_name: str = ""
    ratio: Summary | None = None


class Section(BaseModel):
    """What one benchmark measured (or why it failed)."""

    name: str
    title: str
    rows: list[Row] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def render_table(sections: list[Section]) -> str:
    """One Markdown table over all sections; failures are rows that say FAILED."""
    lines = [
        "| benchmark | measurement | node | baseline | node / baseline |",
        "|---|---|---|---|---|",
    ]
    for section in sections:
        if section.error is not None:
            lines.append(f"| {section.title} | **FAILED** | {_cell(section.error)} | | |")
            continue
        for row in section.rows:
            baseline = f"{row.baseline_name}: {row.baseline.text()}" if row.baseline else row.baseline_name
            lines.append(
                f"| {section.title} | {row.metric} | {_text(row.node)} | {_cell(baseline)} | {_text(row.ratio)} |"
            )
    return "\n".join(lines)


def render_notes(sections: list[Section]) -> str:
    """The notes of every section, as a Markdown list per section."""
    parts: list[str] = []
    for section in sections:
        notes = list(section.notes)
        notes.append(f"took {section.seconds:.0f} s")
        parts.append(f"**{section.title}**\n" + "\n".join(f"- {note}" for note in notes))
    return "\n\n".join(parts)


def render_results(sections: list[Section], machine: dict[str, str], command: str, total_seconds: float) -> str:
    """The whole RESULTS.md text."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine_lines = "\n".join(f"- {key}: {value}" for key, value in machine.items())
    return (
        "# Benchmark results\n\n"
        f"Last run {when} with `{command}` ({total_seconds:.0f} s in all). "
        "Values are median (min-max) over rounds that ran node and baseline alternately "
        "(A B A B ...); the ratio is the median of the per-round ratios. Ratios matter more "
        "than absolute numbers on a shared machine.\n\n"
        f"## Machine\n\n{machine_lines}\n\n"
        f"## Results\n\n{render_table(sections)}\n\n"
        f"## Notes\n\n{render_notes(sections)}\n"
    )


def write_results(text: str, path: Path = RESULTS_PATH) -> Path:
    """Write `text` to `path`, followed by the old file's part from KEPT_MARKER on (if it has one)."""
    old = path.read_text() if path.exists() else ""
    kept = old.find(KEPT_MARKER)
    if kept >= 0:
        text = text.rstrip("\n") + "\n\n" + old[kept:]
    path.write_text(text)
    return path


def _text(summary: Summary | None) -> str:
    return summary.text() if summary is not None else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
