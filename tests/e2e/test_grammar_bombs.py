"""The grammar-bomb family (tests/support/grammar_bombs.py) against a live node with DEFAULT settings.

Issue 21: one 1.9 KB task (`(x?){1000}` x 90 + `x`) froze the model's decode thread, and an
honest task sent 10 s later got no answer in 88 s. Now each bomb either fails its own task
with `Invalid prompt: ` or finishes, and an honest task published right behind it is
answered within 10 s.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.cluster import node_settings, running_node
from tests.support.grammar_bombs import HONEST_FAILURES, WORKFLOW_BOMBS
from tests.support.live_hostile import live_publisher

pytestmark = pytest.mark.slow

HONEST_WITHIN_S = 10.0


async def test_a_default_node_answers_honest_tasks_beside_every_grammar_bomb(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "node", n_ctx=512)
    assert settings.publishers == []  # defaults: anyone may publish
    failures: list[str] = []
    async with running_node(settings) as node, live_publisher(node) as run:
        first = await run.run_valid_task()  # the model is loaded and warm
        assert first.error is None, first
        for bomb in WORKFLOW_BOMBS:
            bombed = asyncio.ensure_future(run.run_task(bomb.workflow(max_tokens=24)))
            await asyncio.sleep(0.2)  # the bomb is in the decode loop first
            sent = time.monotonic()
            honest = await run.run_valid_task()
            took = time.monotonic() - sent
            outcome = await bombed
            print(f"{bomb.name}: honest task in {took:.1f} s; bomb error {outcome.error!r:.100}")
            if honest.error is not None or not (honest.text or "").strip():
                failures.append(f"{bomb.name}: the honest task failed: {honest}")
            elif took > HONEST_WITHIN_S:
                failures.append(f"{bomb.name}: the honest task took {took:.1f} s")
            error = outcome.error
            if error is not None and not (
                error.startswith("Invalid prompt: ") or any(s in error for s in HONEST_FAILURES)
            ):
                # A bomb fails deterministically or honestly (max_tokens cut its answer), never as the node's fault.
                failures.append(f"{bomb.name}: {error!r}")
    assert failures == []
