"""DirectIntake's answers on streams their peer resets first: a stream costs its peer nothing, so an answer that
could not be written is logged once a window per status, never once per stream (a red team's reset right after
its task frame forced one info line per stream)."""

from __future__ import annotations

from typing import Any, cast

import structlog

from node.daemon.direct import DirectIntake
from node.daemon.intake import TaskIntake
from node.daemon.routes import DirectRoutes
from node.p2p.errors import P2PError
from node.p2p.frame_stream import FrameStream

STREAMS = 50


async def gone(stream_id: int, data: bytes, last: bool) -> None:
    raise P2PError(f"stream {stream_id} is closed")


async def closed(stream_id: int, graceful: bool) -> None:
    return None


async def test_answers_to_reset_streams_are_logged_once_a_window() -> None:
    rejections: list[str] = []
    direct = DirectIntake(
        cast(TaskIntake, None), DirectRoutes(), on_reject=lambda topic, reason: rejections.append(reason)
    )
    try:
        with structlog.testing.capture_logs() as logs:
            for stream_id in range(STREAMS):
                await direct._serve(FrameStream(stream_id, "peer", gone, closed), b"{}", 0)
    finally:
        await direct.close()
    assert len(rejections) == STREAMS  # each one is still counted
    undelivered: list[dict[str, Any]] = [e for e in logs if e["event"] == "direct answer not delivered"]
    assert len(undelivered) == 1, len(undelivered)  # was: one a stream
    assert undelivered[0]["status"] == "rejected"
