"""OpenAI's routes that are not a completion, on a real gateway over HTTP on 127.0.0.1 in front of a scripted
peer: models.retrieve, the APIs not served, and a body that is not JSON, each in OpenAI's error shape."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.gateway_net import gateway_over_streaming_peer
from tests.support.streaming_peer import StreamingPeer


async def test_routes_besides_completions_answer_in_openais_shape(tmp_path: Path) -> None:
    peer = StreamingPeer([], "Hello")
    async with gateway_over_streaming_peer(peer, tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            card = await http.get("/v1/models/m")  # the client's models.retrieve("m")
            assert card.status_code == 200 and card.json()["id"] == "m"

            missing = await http.get("/v1/models/no-such-model")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "model_not_found"

            for path in ("/v1/completions", "/v1/responses"):  # FastAPI's {"detail": "Not Found"} before
                other = await http.post(path, json={"model": "m", "prompt": "hi"})
                assert other.status_code == 404, path
                assert "/v1/chat/completions" in other.json()["error"]["message"]

            broken = await http.post(
                "/v1/chat/completions", content=b'{"model": "m",', headers={"Content-Type": "application/json"}
            )
            assert broken.status_code == 400
            assert "not valid JSON" in broken.json()["error"]["message"]


async def test_requests_of_more_parts_than_any_task_holds_are_refused_cheaply(tmp_path: Path) -> None:
    # 30,000 tiny messages in a 1 MiB body held the gateway's event loop ~230 ms each before their 413.
    peer = StreamingPeer([], "Hello")
    many = [{"role": "user", "content": "x"}] * 3000
    parts = [{"role": "user", "content": [{"type": "text", "text": "x"}] * 300}]
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(200)]
    async with gateway_over_streaming_peer(peer, tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for body, field in (
                (many, "messages"),
                (parts, "messages"),
                ([{"role": "user", "content": "hi"}], "tools"),
            ):
                request = {"model": "m", "messages": body} | ({"tools": tools} if field == "tools" else {})
                answer = await http.post("/v1/chat/completions", json=request)
                assert answer.status_code == 400, answer.text
                assert answer.json()["error"]["param"].startswith(field), answer.text
                assert "at most" in answer.json()["error"]["message"], answer.text
            long = await http.post(
                "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]}
            )
            assert long.status_code == 200, long.text  # a long text is one part
    assert peer.task_ids and len(peer.task_ids) == 1


async def test_a_stream_flag_that_is_no_boolean_is_refused_naming_it(tmp_path: Path) -> None:
    peer = StreamingPeer([], "Hello")
    async with gateway_over_streaming_peer(peer, tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for flag in ("yes", "true", 1):
                request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": flag}
                answer = await http.post("/v1/chat/completions", json=request)
                assert answer.status_code == 400, answer.text  # was taken as a streamed request
                assert answer.json()["error"]["param"] == "stream", answer.text
    assert peer.task_ids == []


async def test_errors_answered_before_any_route_have_openais_shape_on_its_paths(tmp_path: Path) -> None:
    # A too-large body, a rebound Host and an unknown /v1 URL were answered {"detail": ...} on every path: the
    # OpenAI client showed its callers the raw body.
    peer = StreamingPeer([], "Hello")
    chat = {"model": "m", "messages": [{"role": "user", "content": "x" * 1_100_000}]}  # past the 1 MiB default
    async with gateway_over_streaming_peer(peer, tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for path in ("/v1/chat/completions", "/v1/chat/completions/"):  # OpenAI's path, with its slash too
                large = await http.post(path, json=chat)
                assert large.status_code == 413, path
                assert set(large.json()["error"]) == {"message", "type", "param", "code"}
                assert "exceeds the limit" in large.json()["error"]["message"]
                assert large.json()["error"]["code"] == "request_too_large"
            rebound = await http.post("/v1/chat/completions", json={"model": "m"}, headers={"Host": "evil.example"})
            assert rebound.status_code == 421 and "Host header" in rebound.json()["error"]["message"]
            unknown = await http.post("/v1/audio/speech", json={"model": "m", "input": "hi"})
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "unknown_url" and "/v1/audio/speech" in unknown.text

            # The gateway's own API keeps its shape, its own 404s included.
            own = await http.post("/v1/tasks", json={"workflow": {}, "models": ["m"], "x": "x" * 1_100_000})
            assert own.status_code == 413 and "exceeds the limit" in own.json()["detail"]
            rebound_own = await http.get("/v1/tasks/t", headers={"Host": "evil.example"})
            assert rebound_own.status_code == 421 and "Host header" in rebound_own.json()["detail"]
            no_task = await http.get("/v1/tasks/no-such-task")
            assert no_task.status_code == 404 and "no task" in no_task.json()["detail"]
            for path in ("/v1/tasks/t/x", "/v1/tasks:batchh", "/v1/nodes/x", "/v1/reputation/x"):  # its typos
                typo = await http.get(path)
                assert typo.status_code in (404, 405) and "detail" in typo.json(), (path, typo.text)
    assert peer.task_ids == []
