"""configure_logging: our structlog events and stdlib loggers' records as the same JSON lines, filtered by level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging, structlog
from node.ops.log import configure_logging
configure_logging("info", "json")
log = structlog.get_logger("node.daemon.intake").bind(task_id="t1")
log.debug("task received")
log.info("task accepted", model="m", direct=False)
logging.getLogger("libp2p.pubsub").warning("stdlib %s", "record")
logging.getLogger("libp2p.pubsub").info("below the library level")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("task crashed")
"""


def test_json_lines_from_structlog_and_stdlib_alike() -> None:
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=root, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["task accepted", "stdlib record", "task crashed"]
    accepted, stdlib, crashed = lines
    assert accepted["task_id"] == "t1" and accepted["model"] == "m" and accepted["direct"] is False
    assert (accepted["level"], accepted["logger"]) == ("info", "node.daemon.intake")
    assert (stdlib["level"], stdlib["logger"]) == ("warning", "libp2p.pubsub")
    assert all(line["timestamp"].endswith("Z") for line in lines)
    assert crashed["level"] == "error" and "ZeroDivisionError" in crashed["exception"]


CONSOLE_SCRIPT = """
import logging, structlog
from node.ops.log import configure_logging
configure_logging("info", "console")
log = structlog.get_logger("node.gateway.service")
log.info("task finished", error="\\x1b]0;owned\\x07\\x1b[2K\\rforged", model="m\\u202eabc")
logging.getLogger("libp2p").warning("stdlib \\x1b[31m%s", "red")
"""


def test_console_lines_carry_no_character_a_terminal_acts_on() -> None:
    # A node's error text or model name reaches the gateway's log: on a console it must not retitle, erase or
    # recolour the terminal (JSON escapes these already).
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT], capture_output=True, text=True, timeout=60, cwd=root, check=True
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 2, lines
    assert not any(c in done.stderr for c in "\x1b\x07\r\u202e"), repr(done.stderr)
    assert "\\x1b]0;owned\\x07" in lines[0] and "\\u202e" in lines[0] and "\\x1b[31m" in lines[1]


ACCEPT_SCRIPT = """
import logging
from node.ops.log import configure_logging
configure_logging("info", "json")
configure_logging("info", "json")  # configured again: still one filter
listener = logging.getLogger("trio.serve_listeners")
for _ in range(30):  # what 3 s out of file descriptors logged
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        listener.error("socket.accept() out of system resource", exc_info=True)
"""


def test_a_failed_accept_repeated_every_tenth_of_a_second_is_logged_once_a_window() -> None:
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", ACCEPT_SCRIPT], capture_output=True, text=True, timeout=60, cwd=root, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == 1, lines
    assert lines[0]["event"] == "socket.accept() out of system resource"
    assert "Too many open files" in lines[0]["exception"]  # the first one's traceback is kept


JSON_SCRIPT = """
import dataclasses, logging, structlog
from node.ops.log import configure_logging

@dataclasses.dataclass
class Hidden:
    secret: str = dataclasses.field(repr=False)

configure_logging("info", "json")
log = structlog.get_logger("node.gateway.service")
log.info("task finished", error="\\x1b]0;owned\\x07\\u202eforged", model="caf\\u00e9")
log.info("odd values", big=2**100, lone="a\\ud800b", raw=b"\\xff", keys={1: "x"})
log.info("hidden fields", hidden=Hidden("s3cret"))
logging.getLogger("libp2p").warning("stdlib \\u202e%s", "\\x1b[31m")
"""


def test_json_lines_are_ascii_whatever_the_values_hold() -> None:
    # Another party's text (a node's error, a model name) in a JSON line reaches whoever tails the log: every
    # character a terminal acts on, and every non-ASCII one (a bidi control), escaped; values pydantic-core's
    # serializer refuses (a lone surrogate, bytes that are not UTF-8) still make a line; an object's fields its
    # repr hides (a dataclass's repr=False) are never written.
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", JSON_SCRIPT], capture_output=True, timeout=60, cwd=root, check=True)
    assert done.stderr.isascii(), done.stderr
    lines = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert [line["event"] for line in lines] == [
        "task finished",
        "odd values",
        "hidden fields",
        "stdlib \u202e\x1b[31m",
    ]
    finished, odd, hidden, _ = lines
    assert finished["error"] == "\x1b]0;owned\x07\u202eforged" and finished["model"] == "caf\u00e9"
    assert odd["big"] == 2**100 and odd["lone"] == "a\ud800b" and odd["keys"] == {"1": "x"}
    assert odd["raw"] == repr(b"\xff") and hidden["hidden"] == "Hidden()"  # as its repr shows it: never the field
    assert "s3cret" not in done.stderr.decode()
