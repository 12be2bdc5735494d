"""The status page at `/` in a real headless Chromium, against a real node and against hostile /status text."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.ops.http_api import HealthReport, HttpServer, create_app
from node.ops.metrics import NodeMetrics
from node.publisher.client import Client, Task
from tests.support.browser import DomIndex, chromium, dump_dom, screenshot
from tests.support.cluster import dialable, node_settings, running_node
from workflows import Simple

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)"),
]
# Where to copy the screenshot too (the README's is made with STATUS_PAGE_SCREENSHOT=docs/status-page.png).
SCREENSHOT_ENV = "STATUS_PAGE_SCREENSHOT"


async def test_the_page_shows_what_status_says_after_a_task(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "node", http_enabled=True, http_port=0)
    async with running_node(settings) as server:
        assert server.running.http is not None
        base = f"http://127.0.0.1:{server.running.http.port}"
        async with Client(peers=[dialable(server)]) as client:
            result = await client.execute(
                Task(workflow=Simple().workflow("Say hi", max_tokens=8), models=["*"]), timeout=90
            )
            await server.running.parts.monitor.sample()
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                page = await http.get("/")
                status = (await http.get("/status")).json()
            dom = DomIndex(await dump_dom(f"{base}/", tmp_path))
            shot = await screenshot(f"{base}/", tmp_path / "status-page.png", tmp_path)

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "src=" not in page.text and "href=" not in page.text, "the page loads nothing from elsewhere"

    minutes = status["activity"]["minutes"]
    assert len(minutes) == 60
    assert sum(m["tasks"] for m in minutes) == 1
    tokens = sum(m["tokens"] for m in minutes)
    assert tokens == (result.stats.model_extra or {})["completionTokens"] > 0
    [recent] = status["activity"]["recent_tasks"]
    assert recent["task_id"] == result.task_id and recent["ok"] and recent["model"] == "smollm2:135m"

    chart = dom.by_id["chart"]
    assert chart.attrs.get("data-rendered") == "true", "the chart was not drawn"
    assert chart.attrs["data-minutes"] == "60"
    assert chart.attrs["data-tasks"] == "1" and chart.attrs["data-tokens"] == str(tokens)
    assert chart.tags.count("rect") == 1 and "polyline" in chart.tags  # one minute with work; the tokens line
    assert dom.by_id["id-address"].text == status["address"] == server.running.identity.address
    assert dom.by_id["id-peer"].text == status["peer_id"]
    assert dom.by_id["cap-max"].text == str(status["capacity"]["max"])
    assert dom.by_id["state"].text == "serving"
    assert status["paused"]["paused"] is False and dom.by_id["cap-paused"].text == "no"
    models = dom.by_id["models"].text
    assert "smollm2:135m" in models and f"pid {status['execution']['smollm2:135m']['pid']}" in models
    tasks = dom.by_id["tasks"].text
    assert result.task_id in tasks and recent["publisher"] in tasks and "ok" in tasks
    assert dom.by_id["error"].text == ""

    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000  # a drawn page, not a blank one
    if target := os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, target)


HOSTILE = '<img src=x onerror="document.body.dataset.pwned=1"><script>document.body.dataset.pwned=1</script>'


def _hostile_status() -> dict[str, Any]:
    """A /status whose network-supplied strings are markup: the page must show them as text."""
    return {
        "address": HOSTILE,
        "peer_id": HOSTILE,
        "listen": [HOSTILE],
        "version": HOSTILE,
        "models": [HOSTILE],
        "capacity": {"free": 1, "max": 2},
        "pending_tasks": 0,
        "peers": 1,
        "peer_ids": [HOSTILE],
        "mesh": {HOSTILE: 1},
        "last_heartbeat_seen": None,
        "journal_backlog": 0,
        "uptime_s": 5,
        "execution": {HOSTILE: {"pid": HOSTILE, "up": True, "benched": False, "crashes_in_window": HOSTILE}},
        "activity": {
            "minutes": [
                {"minute": 60 * i, "tasks": 1, "failed": 0, "tokens": 3, "tokens_per_s": 0.05} for i in range(60)
            ],
            "recent_tasks": [
                {
                    "task_id": HOSTILE,
                    "publisher": HOSTILE,
                    "model": HOSTILE,
                    "ok": False,
                    "error": HOSTILE,
                    "completion_tokens": 0,
                    "received_at": 1.0,
                    "ended_at": 2.0,
                    "elapsed_s": 1.0,
                }
            ],
        },
    }


async def test_markup_from_the_network_is_shown_as_text(tmp_path: Path) -> None:
    app = create_app(NodeMetrics(), lambda: HealthReport(ok=True), _hostile_status)
    http = HttpServer(app)
    await http.start("127.0.0.1", 0)
    try:
        html = await dump_dom(f"http://127.0.0.1:{http.port}/", tmp_path)
    finally:
        await http.stop()
    dom = DomIndex(html)
    assert dom.by_id["chart"].attrs.get("data-rendered") == "true"
    assert "data-pwned" not in html
    for section in ("id-address", "id-peer", "models", "tasks", "net-peer-list", "net-mesh"):
        assert HOSTILE in dom.by_id[section].text, f"{section} does not show the text as text"
        assert "img" not in dom.by_id[section].tags and "script" not in dom.by_id[section].tags
