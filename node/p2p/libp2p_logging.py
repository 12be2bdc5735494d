"""Route py-libp2p's stdlib logging into the application's logging.

Importing libp2p configures the `libp2p` logger itself (its own handlers,
WARNING, `propagate = False`, or a temp-file handler when LIBP2P_DEBUG is set).
After the import we undo that, so its records reach the root handlers the
application configured (structlog's stdlib integration) at a level we choose.
"""

from __future__ import annotations

import logging

from node.p2p.errors import is_nursery_closed

LIBP2P_LOGGER = "libp2p"
# libp2p's service managers log a task that hit "Nursery is closed to new arrivals"
# during shutdown as an ERROR with a traceback; it is expected, so we demote it.
SERVICE_LOGGERS = tuple(
    f"libp2p.tools.anyio_service.TrioManager.{service}" for service in ("Swarm", "Pubsub", "GossipSub")
)
# The TCP transport logs every refused or unreachable dial as an ERROR, then raises; the caller reports the
# failed dial itself (the node's connector, run-task), so the transport's line is demoted.
TCP_LOGGER = "libp2p.transport.tcp.tcp"
DIAL_FAILED = "Failed to open TCP stream"


class ShutdownNoiseFilter(logging.Filter):
    """Demote shutdown-time "Nursery is closed" task errors to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Log a nursery-closed error at shutdown as DEBUG, without its traceback."""
        if record.levelno >= logging.ERROR and record.exc_info and is_nursery_closed(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
            return _demote(record)
        return True


class DialNoiseFilter(logging.Filter):
    """Demote the TCP transport's ERROR for a dial that failed to DEBUG (its caller reports the failure)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Log a failed TCP dial as DEBUG."""
        if record.levelno >= logging.ERROR and str(record.msg).startswith(DIAL_FAILED):
            return _demote(record)
        return True


def _demote(record: logging.LogRecord) -> bool:
    """Make `record` a DEBUG one; whether it is still logged (its logger's level admits DEBUG)."""
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def route_libp2p_logging(level: int | str = logging.WARNING) -> None:
    """Make the `libp2p` logger tree propagate to the root logger at `level`.

    Idempotent; call it after `import libp2p` (node.p2p.service does).
    """
    if isinstance(level, str):
        number = logging.getLevelNamesMapping().get(level.upper())
        if number is None:
            raise ValueError(f"unknown log level for libp2p: {level!r}")
        level = number
    names = [LIBP2P_LOGGER] + [name for name in logging.root.manager.loggerDict if name.startswith(LIBP2P_LOGGER + ".")]
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        if name != LIBP2P_LOGGER:
            logger.setLevel(logging.NOTSET)  # inherit the level set on `libp2p`
    logging.getLogger(LIBP2P_LOGGER).setLevel(level)
    for name, noise in [*((name, ShutdownNoiseFilter) for name in SERVICE_LOGGERS), (TCP_LOGGER, DialNoiseFilter)]:
        logger = logging.getLogger(name)
        if not any(isinstance(f, noise) for f in logger.filters):
            logger.addFilter(noise())
