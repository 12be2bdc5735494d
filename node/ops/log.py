"""Logging: structlog for our code, stdlib loggers (libp2p, llama.cpp) rendered the same way.

JSON lines when stderr is not a terminal (production, systemd, Docker), a
readable console otherwise. Task log lines carry `task_id`: the daemon binds it
on the task's logger, an execution process in the task's context (`structlog.contextvars`).

Our own events go from structlog straight to stderr (a level-filtering bound
logger, one write per line): a task logs a few lines at info, and the stdlib
route (a LogRecord made, copied and formatted per line) cost ~20 us a line
against ~6 us. Stdlib loggers still go through a handler whose formatter runs
the same processors, so both kinds of line look alike, and lets a library's warnings through once a
window per call site (`LibraryNoiseFilter`): many are another party's doing, one a request or a dial.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

import pydantic_core
import structlog

from node.ops.inert_text import inert

LogFormat = Literal["auto", "json", "console"]
LIBRARY_NOISE_WINDOW_S = 10.0  # a library's call site logs at most once in it (LibraryNoiseFilter)


class NamedWriteLogger(structlog.WriteLogger):
    """A structlog WriteLogger that knows its name (the module's), for the `logger` field, and that goes on
    when its file cannot be written (stderr a closed pipe: `compute-node start | tee` after tee ended)."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name

    def msg(self, message: str) -> None:
        """Write the line; a file that cannot be written loses the line, without raising."""
        try:
            super().msg(message)
        except (OSError, ValueError):  # a broken pipe, a closed file: the line is lost, the node is not
            pass

    log = debug = info = warn = warning = fatal = failure = err = error = critical = exception = msg


class NamedWriteLoggerFactory:
    """Makes a `NamedWriteLogger` on `file` for `structlog.get_logger(name)`."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> NamedWriteLogger:
        """A logger for the module named first in `args`, writing to the factory's file."""
        return NamedWriteLogger(self._file, str(args[0]) if args else "")


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Configure structlog and the stdlib root logger once, at process start."""
    stream: TextIO = sys.stderr if sys.stderr is not None else open(os.devnull, "w")  # noqa: SIM115 - started with 2>&-
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=json_line)
        if use_json
        # plain_traceback: with `rich` importable structlog's default prints every frame's locals
        # (a task's workflow and prompt, the settings' secrets).
        else structlog.dev.ConsoleRenderer(colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback)
    )
    exc_info: structlog.types.Processor = structlog.processors.format_exc_info if use_json else _identity
    # JSON escapes every control character; the console prints a string as it is unless it holds a space,
    # a quote, `=`, CR or LF, so ESC, BEL, VT or a bidi control in another party's text (a node's error, a
    # model name) would reach the terminal: made inert first.
    inert_values: structlog.types.Processor = _identity if use_json else _inert_strings
    structlog.configure(
        processors=[*shared, exc_info, inert_values, renderer],
        logger_factory=NamedWriteLoggerFactory(stream),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, exc_info, inert_values, renderer],
        )
    )
    handler.addFilter(LibraryNoiseFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries log at their own levels; keep their noise at warnings unless debugging.
    for noisy in ("libp2p", "multiaddr", "httpx", "httpcore", "uvicorn", "huggingface_hub", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


CallSite = tuple[object, ...]  # logger, file, line (and, with an exception, its type and innermost frame)


def _origin(exc: BaseException) -> tuple[str, str, int]:
    """Where an exception was raised: its type and its innermost frame (bounded by the code, as call sites are)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("", 0)
    return (type(exc).__qualname__, *where)


class LibraryNoiseFilter(logging.Filter):
    """The libraries' records at WARNING and above: at most one per call site a `window_s`.

    Our own lines go from structlog straight to the log; what reaches the stdlib handler is the libraries'
    (py-libp2p, uvicorn, asyncio, trio, httpx, llama.cpp's), and many of their warnings are another party's
    doing, one a connection or a request: two ERRORs of py-libp2p for each dial whose handshake fails (a peer
    that advertises a listener answering nothing), uvicorn's for each request it cannot parse or upgrade it
    does not serve, trio's for each accept out of descriptors (every 0.1 s while they last). Each call site
    passes once a window, its traceback kept; the first through after held-back ones says how many. Keyed by
    call site, not text: a message formatted before logging (a peer id, the peer's bytes) differs each time;
    a record with an exception by the exception's type and innermost frame too (asyncio reports every task's
    from one line). The keys are bounded by the code installed. Below WARNING every record passes.
    """

    def __init__(self, window_s: float = LIBRARY_NOISE_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[CallSite, float] = {}
        self._held_back: dict[CallSite, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass a record below WARNING; of the rest, one a window per call site, saying how many were held back."""
        if record.levelno < logging.WARNING:
            return True
        site: CallSite = (record.name, record.pathname, record.lineno)
        if record.exc_info and record.exc_info[1] is not None:  # one call site reports many failures (asyncio's
            site += _origin(record.exc_info[1])  # handler: every task's): each origin is a site of its own
        now = time.monotonic()
        if now - self._last.get(site, -self.window_s) < self.window_s:
            self._held_back[site] = self._held_back.get(site, 0) + 1
            return False
        self._last[site] = now
        if held_back := self._held_back.pop(site, 0):
            record.msg = f"{record.getMessage()} ({held_back} more like it not logged since the last)"
            record.args = ()
        return True


_PLAIN = frozenset({str, int, float, bool, type(None)})


def json_line(event: Any, default: Callable[[Any], Any] | None = None, **_: Any) -> str:
    """The event as one line of JSON, ASCII only, as json.dumps writes it.

    An event of plain values (a task's lines) goes through pydantic-core's serializer, ~3.5x faster; json.dumps
    takes any other (a dict, a model, a dataclass: pydantic-core would write fields their repr hides), any that
    pydantic-core refuses (a lone surrogate), and any it writes as UTF-8 (a bidi control in another party's text
    must reach a terminal escaped)."""
    data = b"\x80"  # not ASCII: json.dumps below
    if isinstance(event, dict) and all(type(value) in _PLAIN for value in event.values()):
        try:
            data = pydantic_core.to_json(event)
        except (pydantic_core.PydanticSerializationError, TypeError, ValueError):
            pass
    return data.decode("ascii") if data.isascii() else json.dumps(event, default=default)


def _identity(logger: object, name: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    return event_dict


def _inert_strings(logger: object, name: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """Console only: every string value made inert (the event too: a stdlib record's is formatted text).
    Values inside lists and dicts are printed as their repr, which escapes these characters already."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = inert(value)
    return event_dict
