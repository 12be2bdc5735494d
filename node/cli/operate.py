"""`compute-node pause`, `resume` and `ledger`: an operator's commands for a node on this machine."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from config.settings import Settings
from node.cli.settings import EXIT_ERROR, flag_number

WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def add_operate_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_settings_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add the operator's subcommands (pause, resume, ledger, doctor) to the parser."""
    pause = commands.add_parser("pause", help="stop taking new tasks (running ones finish); kept across restarts")
    resume = commands.add_parser("resume", help="take tasks again after `pause`")
    ledger = commands.add_parser("ledger", help="totals of the tasks this node ran, by day, model, publisher, outcome")
    ledger.add_argument("--days", type=_days, default=None, help="only the last DAYS days (default: all kept)")
    ledger.add_argument("--json", action="store_true", help="print JSON")
    doctor = commands.add_parser("doctor", help="check this machine and config; a fix for each problem found")
    doctor.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["runtime", "data", "ports", "models", "memory", "network", "addresses", "remote"],
        help="leave out a check (repeatable)",
    )
    doctor.add_argument(
        "--hear", type=float, default=10.0, help="seconds to hear peers' heartbeats (clock skew; default 10)"
    )
    for parser in (pause, resume, ledger, doctor):
        add_settings_flags(parser)


def _days(text: str) -> float:
    """A finite number of days >= 0 (argparse type)."""
    value = flag_number(text)
    if not 0 <= value < 1e6:  # NaN and inf fail too
        raise argparse.ArgumentTypeError(f"must be a number of days >= 0, not {text!r}")
    return value


def run_doctor_command(settings: Settings, skip: list[str], listen_s: float) -> int:
    """Print each check with OK/WARN/FAIL (and a fix); 1 when any failed."""
    from node.cli.doctor.report import print_report
    from node.cli.doctor.run import Readings, run_doctor

    checks = run_doctor(settings, Readings(listen_s=listen_s, skip=set(skip)))
    return print_report(checks, sys.stdout)


def run_pause(settings: Settings, pause: bool) -> int:
    """Ask the running node over its loopback HTTP port, with the control token from its data dir; with no
    node answering, change the kept state (unless a node runs on the data dir: its HTTP port is another)."""
    import httpx

    from node.daemon.pause import PAUSE_FILE, PauseState
    from node.ops.control_token import CONTROL_HEADER, CONTROL_TOKEN_FILE, ControlTokenError, read_control_token
    from node.ops.data_lock import lock_holder

    url = f"http://{_local_host(settings.http_host)}:{settings.http_port}/{'pause' if pause else 'resume'}"
    try:
        if settings.data_dir.exists() and not settings.data_dir.is_dir():
            print(f"compute-node: the data directory {settings.data_dir} is not a directory", file=sys.stderr)
            return EXIT_ERROR
        token = read_control_token(settings.data_dir)
    except ControlTokenError as exc:
        print(f"compute-node: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # systemd's DynamicUser keeps the data dir in /var/lib/private, root's only
        where = settings.data_dir / CONTROL_TOKEN_FILE
        print(f"compute-node: cannot read {where} ({exc.strerror}): run this as the node's user", file=sys.stderr)
        return EXIT_ERROR
    try:
        answer = httpx.post(url, timeout=10, headers={CONTROL_HEADER: token} if token else None)
    except httpx.TransportError as exc:
        where = settings.data_dir / PAUSE_FILE
        holder = lock_holder(settings.data_dir, "node")
        if holder is not None:  # its HTTP port is another: the file would change only its next start
            print(
                f"compute-node: no node answered on {url}, but a node is running on {settings.data_dir} (pid {holder}): "
                "give this command the config file or --http-port / --http-host it was started with; "
                f"{where} is left as it is",
                file=sys.stderr,
            )
            return EXIT_ERROR
        state = PauseState(settings.data_dir)
        try:
            view = state.pause() if pause else state.resume()
        except OSError as error:
            print(f"compute-node: no node answered on {url}, and {where} cannot be changed: {error}", file=sys.stderr)
            return EXIT_ERROR
        print(f"no node answered on {url} ({type(exc).__name__}): the kept state is changed in {where}")
        print(f"paused: {str(view.paused).lower()} (a node started from {settings.data_dir} starts so)")
        return 0
    if answer.status_code != 200:
        print(f"compute-node: {url} answered {answer.status_code}: {answer.text[:300]}", file=sys.stderr)
        return EXIT_ERROR
    view = answer.json()
    print(f"paused: {str(view['paused']).lower()}" + (f" ({view['reason']})" if view.get("reason") else ""))
    return 0


def _local_host(host: str) -> str:
    if host in WILDCARD_HOSTS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def run_ledger(settings: Settings, days: float | None, as_json: bool) -> int:
    """Print the ledger's totals (as tables or JSON), of the last `days` days or all kept; the exit status."""
    from node.daemon.ledger import GROUPINGS, LedgerError, totals

    since = 0 if days is None else time.time_ns() - int(days * 86400 * 1e9)
    try:
        report = totals(settings.ledger_path, since)
    except LedgerError as exc:
        print(f"compute-node: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if as_json:
        print(json.dumps({k: [t.model_dump() for t in rows] for k, rows in report.items()}, indent=2))
        return 0
    for grouping in GROUPINGS:
        print(f"{('BY ' + grouping.upper()):44} {'TASKS':>8} {'OK':>8} {'PROMPT TOK':>12} {'GEN TOK':>12}")
        for row in report[grouping]:
            print(f"{row.key:44} {row.tasks:>8} {row.ok:>8} {row.prompt_tokens:>12} {row.completion_tokens:>12}")
        if not report[grouping]:
            print("(no tasks)")
        print()
    return 0
