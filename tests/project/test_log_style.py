"""Every structlog event in node/, workflows/ and models/ is written in the one log style
ARCHITECTURE.md names: a short lowercase phrase of space-separated words ("task accepted",
"result publish failed; kept for retry"), never dotted (`p2p.crashed`) or snake_case
(`model_loaded`), and always a literal, so a reader can grep for it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("node", "workflows", "models")
LEVELS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "msg"})
# A logger is a name ending in `log` or `logger` (`log`, `task_log`, `accepted.log`, `self._logger`).
_LOGGER = re.compile(r"(?:^|_)log(?:ger)?$")
# The first word is plain lowercase (no `.` or `_`); later words may name a thing (`idle_only`, `GPU`).
EVENT_STYLE = re.compile(r"^[a-z][a-z0-9-]*(?: \S+)*$")


def _receiver_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _events(arg: ast.expr) -> list[str] | None:
    """The event texts a log call's first argument can take; None when one is not a literal."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.IfExp):
        body, orelse = _events(arg.body), _events(arg.orelse)
        return None if body is None or orelse is None else body + orelse
    return None


def style_violations(source: str, where: str) -> list[str]:
    """Each log call in `source` whose event is not a literal phrase in the house style."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = _receiver_name(node.func.value)
        if node.func.attr not in LEVELS or receiver is None or not _LOGGER.search(receiver):
            continue
        events = _events(node.args[0]) if node.args else None
        if events is None:
            found.append(f"{where}:{node.lineno}: the event is not a literal string")
            continue
        found += [f"{where}:{node.lineno}: {event!r}" for event in events if not EVENT_STYLE.match(event)]
    return found


def test_every_log_event_is_a_lowercase_phrase() -> None:
    violations: list[str] = []
    scanned = 0
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            scanned += source.count("log.")
            violations += style_violations(source, str(path.relative_to(ROOT)))
    assert scanned > 100, "the scan found almost no log calls: has the logger naming changed?"
    assert not violations, "log events outside the house style (see ARCHITECTURE.md, Words):\n" + "\n".join(violations)


def test_the_scan_catches_each_other_style() -> None:
    source = """
log.info("p2p.crashed")
task_log.warning("model_loaded", model=name)
self._log.error("remote engine " + state)
accepted.log.info("task accepted", model=name)
log.debug("remote engine back" if up else "remote engine down")
run.cancel("not a logger")
"""
    violations = style_violations(source, "sample.py")
    assert violations == [
        "sample.py:2: 'p2p.crashed'",
        "sample.py:3: 'model_loaded'",
        "sample.py:4: the event is not a literal string",
    ]
