"""POST /pause and /resume: served to loopback clients over real HTTP, refused to any other."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from node.ops.http_api import HealthReport, HttpServer, PauseControls, create_app
from node.ops.metrics import NodeMetrics


class PauseFlag:
    def __init__(self) -> None:
        self.paused = False

    def pause(self) -> dict[str, Any]:
        self.paused = True
        return {"paused": True, "reason": "operator"}

    def resume(self) -> dict[str, Any]:
        self.paused = False
        return {"paused": False, "reason": None}


def app_for(flag: PauseFlag):  # type: ignore[no-untyped-def]
    return create_app(
        NodeMetrics(),
        lambda: HealthReport(ok=True),
        lambda: {"paused": flag.paused},
        PauseControls(flag.pause, flag.resume),
    )


async def test_loopback_client_pauses_and_resumes() -> None:
    flag = PauseFlag()
    server = HttpServer(app_for(flag))
    await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client:
            assert (await client.post("/pause")).json()["paused"] is True
            assert (await client.get("/status")).json() == {"paused": True}
            assert (await client.get("/pause")).status_code == 405  # changing state takes a POST
            assert (await client.post("/resume")).json()["paused"] is False
    finally:
        await server.stop()
    assert not flag.paused


@pytest.mark.parametrize("client_host", ["203.0.113.7", "10.0.0.2", "::ffff:192.0.2.1", "not-an-ip"])
async def test_other_clients_are_refused(client_host: str) -> None:
    flag = PauseFlag()
    transport = httpx.ASGITransport(app=app_for(flag), client=(client_host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        refused = await client.post("/pause")
        assert refused.status_code == 403 and "loopback" in refused.json()["error"]
        assert (await client.post("/resume")).status_code == 403
        assert (await client.get("/status")).status_code == 200
    assert not flag.paused


async def test_mapped_loopback_is_loopback() -> None:
    flag = PauseFlag()
    transport = httpx.ASGITransport(app=app_for(flag), client=("::ffff:127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        assert (await client.post("/pause")).status_code == 200
    assert flag.paused


# What a browser on the operator's machine sends when a page of any site posts to the node's loopback
# port (a form, or fetch in no-cors mode; a DNS-rebound name makes the page's own origin the node's):
# the client is loopback, yet the request is the page's, never the operator's.
BROWSER_HEADERS = {
    "cross_site_form": {"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
    "opaque_origin": {"Origin": "null"},
    "dns_rebound_same_origin": {"Origin": "http://rebound.example:9090", "Sec-Fetch-Site": "same-origin"},
    "fetch_metadata_only": {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
}


@pytest.mark.parametrize("name", sorted(BROWSER_HEADERS))
async def test_a_web_page_cannot_pause_or_resume_through_the_operators_browser(name: str) -> None:
    flag = PauseFlag()
    server = HttpServer(app_for(flag))
    await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client:
            refused = await client.post("/pause", headers=BROWSER_HEADERS[name])
            assert refused.status_code == 403 and "browser" in refused.json()["error"]
            assert not flag.paused
            flag.paused = True
            assert (await client.post("/resume", headers=BROWSER_HEADERS[name])).status_code == 403
            assert flag.paused
            assert (await client.post("/resume")).status_code == 200  # as `compute-node resume` asks
    finally:
        await server.stop()
