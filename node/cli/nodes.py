"""`compute-node nodes`: the reputation table a publisher (run-task or a gateway) measured, from its data dir."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from node.cli.settings import EXIT_ERROR
from node.publisher.reputation import ReputationUnreadableError, read_views
from node.publisher.reputation_records import ReputationView

PUBLISHER_DATA_DIR = Path("~/.compute-node/publisher")
REPUTATION_FILE = "reputation.sqlite3"


def reputation_path(data_dir: Path) -> Path:
    """Where a publisher with this data dir keeps its reputation table."""
    return data_dir.expanduser() / REPUTATION_FILE


def add_nodes_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add `nodes` to the `compute-node` subcommands; returns its parser."""
    parser = subparsers.add_parser("nodes", help="print the nodes this publisher measured (its reputation table)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=PUBLISHER_DATA_DIR,
        help=f"the publisher's data dir (default {PUBLISHER_DATA_DIR}; a gateway's: its data_dir)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object, {'nodes': [...]}")
    return parser


def run_nodes(args: argparse.Namespace) -> int:
    """Print the table; the exit code."""
    try:
        views = read_views(reputation_path(args.data_dir))
    except ReputationUnreadableError as exc:
        print(f"compute-node nodes: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps({"nodes": [view.model_dump() for view in views]}, indent=2))
        return 0
    print(format_table(views))
    if not views and not reputation_path(args.data_dir).exists():  # a mistyped --data-dir reads as "nothing yet"
        print(f"(no reputation table at {reputation_path(args.data_dir)})")
    return 0


def format_table(views: list[ReputationView], now: float | None = None) -> str:
    """One line per node, best score first."""
    now = time.time() if now is None else now
    header = (
        f"{'address':<40}  {'answered':>8} {'errors':>6} {'timeouts':>8} {'busy':>6} {'scored':>6} {'result_s':>8}"
        f" {'tps':>8} {'claimed':>9} {'success':>7} {'penalty':>7} {'verified':>8} {'score':>8}  banned"
    )
    lines = [header]
    for v in views:
        mean = f"{v.mean_result_s:.2f}" if v.mean_result_s is not None else "-"
        tps = f"{v.measured_tps:.1f}" if v.measured_tps is not None else "-"
        banned = f"{(v.banned_until - now) / 3600:.1f} h more" if v.banned_until is not None else "-"
        lines.append(
            f"{v.address:<40}  {v.answered:>8.1f} {v.errors:>6.1f} {v.timeouts:>8.1f} {v.busy:>6.1f} {v.scored:>6.1f} {mean:>8}"
            f" {tps:>8} {v.claimed_tps:>9.4g} {v.success:>7.2f} {v.penalty:>7.3f}"
            f" {f'{v.verify_passed}/{v.verify_passed + v.verify_failed}':>8} {v.score:>8.2f}  {banned}"
        )
    if not views:
        lines.append("(no node measured yet)")
    return "\n".join(lines)
