"""py-libp2p's log records reach our logging, with its shutdown noise demoted."""

from __future__ import annotations

import logging

import pytest

from node.p2p.libp2p_logging import SERVICE_LOGGERS, TCP_LOGGER, route_libp2p_logging


def test_libp2p_logs_reach_our_logging_and_shutdown_noise_is_demoted(caplog: pytest.LogCaptureFixture) -> None:
    route_libp2p_logging("WARNING")
    swarm_log = logging.getLogger(SERVICE_LOGGERS[0])
    closed = ExceptionGroup("nursery", [RuntimeError("Nursery is closed to new arrivals")])
    with caplog.at_level(logging.WARNING):
        for error in (closed, ValueError("real failure")):
            try:
                raise error
            except (ExceptionGroup, ValueError):
                swarm_log.error("task exited with error", exc_info=True)
        logging.getLogger("libp2p.pubsub.pubsub").info("below the routed level")
    [record] = caplog.records
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


def test_a_failed_tcp_dial_is_demoted_and_other_transport_errors_stay(caplog: pytest.LogCaptureFixture) -> None:
    """The caller reports a failed dial (the connector, run-task): the transport's own ERROR would repeat it."""
    route_libp2p_logging("WARNING")
    tcp_log = logging.getLogger(TCP_LOGGER)
    with caplog.at_level(logging.WARNING):
        tcp_log.error("Failed to open TCP stream: %s", ConnectionRefusedError(111, "Connection refused"))
        tcp_log.error("Unexpected error opening TCP stream: %s", RuntimeError("odd"))
    [record] = caplog.records
    assert record.levelname == "ERROR" and record.getMessage().startswith("Unexpected error")
