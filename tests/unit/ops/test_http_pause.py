"""POST /pause and /resume: served to loopback clients that carry the control token, over real HTTP; refused
to any other."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from node.ops.control_token import CONTROL_HEADER, ControlTokenError, read_control_token, write_control_token
from node.ops.http_api import HealthReport, HttpServer, PauseControls, create_app
from node.ops.metrics import NodeMetrics

TOKEN = "ab" * 32
AUTH = {CONTROL_HEADER: TOKEN}


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
        PauseControls(flag.pause, flag.resume, TOKEN),
    )


async def test_loopback_client_pauses_and_resumes() -> None:
    flag = PauseFlag()
    server = HttpServer(app_for(flag))
    await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client:
            assert (await client.post("/pause", headers=AUTH)).json()["paused"] is True
            assert (await client.get("/status")).json() == {"paused": True}
            assert (await client.get("/pause")).status_code == 405  # changing state takes a POST
            assert (await client.post("/resume", headers=AUTH)).json()["paused"] is False
    finally:
        await server.stop()
    assert not flag.paused


@pytest.mark.parametrize("client_host", ["203.0.113.7", "10.0.0.2", "::ffff:192.0.2.1", "not-an-ip"])
async def test_other_clients_are_refused(client_host: str) -> None:
    flag = PauseFlag()
    transport = httpx.ASGITransport(app=app_for(flag), client=(client_host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        refused = await client.post("/pause", headers=AUTH)
        assert refused.status_code == 403 and "loopback" in refused.json()["error"]
        assert (await client.post("/resume", headers=AUTH)).status_code == 403
        assert (await client.get("/status")).status_code == 200
    assert not flag.paused


async def test_mapped_loopback_is_loopback() -> None:
    flag = PauseFlag()
    transport = httpx.ASGITransport(app=app_for(flag), client=("::ffff:127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        assert (await client.post("/pause", headers=AUTH)).status_code == 200
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
            refused = await client.post("/pause", headers={**BROWSER_HEADERS[name], **AUTH})
            assert refused.status_code == 403 and "browser" in refused.json()["error"]
            assert not flag.paused
            flag.paused = True
            assert (await client.post("/resume", headers={**BROWSER_HEADERS[name], **AUTH})).status_code == 403
            assert flag.paused
            assert (await client.post("/resume", headers=AUTH)).status_code == 200  # as `compute-node resume` asks
    finally:
        await server.stop()


@pytest.mark.parametrize(
    "headers",
    [
        [],  # another process on the machine: another user's, or a taken-over execution process
        [(CONTROL_HEADER, "cd" * 32)],  # a wrong token
        [(CONTROL_HEADER, TOKEN[:-1])],  # a prefix of it
        [(CONTROL_HEADER, TOKEN), (CONTROL_HEADER, "cd" * 32)],  # two: the request is not the CLI's
        [("authorization", f"Bearer {TOKEN}")],  # another header
    ],
)
async def test_a_loopback_client_without_the_token_is_refused(headers: list[tuple[str, str]]) -> None:
    flag = PauseFlag()
    transport = httpx.ASGITransport(app=app_for(flag), client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        for path in ("/pause", "/resume"):
            refused = await client.post(path, headers=headers)
            assert refused.status_code == 401 and "control token" in refused.json()["error"], path
    assert not flag.paused


def test_the_token_is_new_each_time_and_owner_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert read_control_token(tmp_path) is None  # no node has started here
    first = write_control_token(tmp_path)
    second = write_control_token(tmp_path)
    assert len(first) == 64 and first != second and read_control_token(tmp_path) == second
    assert (tmp_path / "control.token").stat().st_mode & 0o077 == 0
    assert [p.name for p in tmp_path.iterdir()] == ["control.token"]  # no temporary file left


def test_a_token_file_that_holds_no_token_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "control.token").write_bytes("jeton-\u00e9".encode())
    with pytest.raises(ControlTokenError, match="control.token holds no token"):
        read_control_token(tmp_path)


class FullDisk(PauseFlag):
    def pause(self) -> dict[str, Any]:
        raise OSError(28, "No space left on device")


async def test_a_pause_that_cannot_be_kept_is_answered_503_with_its_cause() -> None:
    flag = FullDisk()
    server = HttpServer(app_for(flag))
    await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client:
            answer = await client.post("/pause", headers=AUTH)
            assert answer.status_code == 503 and "No space left on device" in answer.json()["error"]
            assert (await client.post("/resume", headers=AUTH)).status_code == 200  # the endpoint still serves
    finally:
        await server.stop()
