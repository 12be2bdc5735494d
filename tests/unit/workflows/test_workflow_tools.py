"""Tools and egress safety against real HTTP servers on loopback.

Nothing here connects anywhere but 127.0.0.1: private and link-local targets
must be refused before any connection is attempted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from models.batching import BatchedLlamaModel
from tests.support.http_server import LocalServer, Route
from tests.support.protocol_files import EXAMPLES
from tests.support.tool_fetch import fetch_here
from workflows import (
    EgressRefusedError,
    EngineOptions,
    SearchProvider,
    ToolError,
    ToolSettings,
    parse_workflow,
    run_workflow,
)
from workflows.egress import Egress, is_public
from workflows.options import AllowEntry
from workflows.schema import HttpRequestTool, WorkflowConfig
from workflows.tools import build_tools
from workflows.tools.base import Tool
from workflows.tools.custom import http_request_tool
from workflows.tools.registry import configured_builtins


@pytest.fixture
def servers() -> Iterator[tuple[LocalServer, LocalServer]]:
    """Two servers; A redirects to B and to `localhost`, B answers."""
    b = LocalServer({"/": Route(body=b"from B")})
    a = LocalServer(
        {
            "/price": Route(body=b"A-17 costs 42 EUR"),
            "/big": Route(body=b"x" * 5000),
            "/slow": Route(delay_s=1.5),
            "/to-b": Route(status=302, headers={"location": f"http://127.0.0.1:{b.port}/"}),
            "/to-localhost": Route(status=302, headers={"location": f"http://localhost:{b.port}/"}),
            "/to-self": Route(status=307, headers={"location": "/price"}),
            "/page": Route(
                body=b"<html><head><title>t</title><script>x()</script></head><body><h1>Hello</h1>"
                b"<p>Plain text here.</p></body></html>",
                headers={"content-type": "text/html"},
            ),
            "/search": Route(
                body=json.dumps(
                    {"results": [{"title": "Lava", "url": "https://e.org/lava", "content": "Molten rock."}]}
                ).encode()
            ),
            "/serper": Route(
                body=json.dumps(
                    {"organic": [{"title": "Izmir", "link": "https://e.org/izmir", "snippet": "A city."}]}
                ).encode()
            ),
        }
    )
    yield a, b
    a.close()
    b.close()


def _reader() -> Tool:
    settings = ToolSettings(reader_enabled=True, egress_allow=["127.0.0.1"])
    return configured_builtins(settings, Egress(settings), 100)["reader"]


def _tool(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> HttpRequestTool:
    return HttpRequestTool(
        mode="http_request", name="t", url=url, method=method, headers=headers or {}, body={"code": "a code"}
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/x",
        "http://localhost:9/x",
        "http://[::ffff:127.0.0.1]:9/",
        "http://0.0.0.0:9/",
        "http://224.0.0.1/",
        "http://192.168.1.1/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
    ],
)
async def test_non_public_targets_are_refused_before_connecting(url: str) -> None:
    run = http_request_tool(_tool(url), ToolSettings(), Egress(ToolSettings())).run
    assert run is not None
    started = time.monotonic()
    with pytest.raises(EgressRefusedError, match="not public"):
        await run({"code": "x"})
    assert time.monotonic() - started < 1.0


def test_address_classification_and_allow_entries() -> None:
    import ipaddress

    assert is_public(ipaddress.ip_address("93.184.216.34")) and is_public(ipaddress.ip_address("2606:4700::1111"))
    assert not is_public(ipaddress.ip_address("100.64.0.1")) and not is_public(ipaddress.ip_address("::"))
    assert AllowEntry.parse("127.0.0.1:8080") == AllowEntry(None, ipaddress.ip_network("127.0.0.1/32"), 8080)
    assert AllowEntry.parse("[::1]:81").port == 81 and AllowEntry.parse("::1").port is None
    assert AllowEntry.parse("Api.Example.com").name == "api.example.com"
    assert AllowEntry.parse("10.0.0.0/8").permits("x", 80, ipaddress.ip_address("10.2.3.4"))


async def test_allowed_loopback_server_is_reached(servers: tuple[LocalServer, LocalServer]) -> None:
    a, _ = servers
    settings = ToolSettings(egress_allow=[f"127.0.0.1:{a.port}"])
    response = await fetch_here(settings, "GET", a.url("/to-self"))
    assert response.text == "A-17 costs 42 EUR" and [s.path for s in a.seen] == ["/to-self", "/price"]


@pytest.mark.parametrize("path", ["/to-b", "/to-localhost"])
async def test_redirect_to_a_non_allowed_target_is_refused(servers: tuple[LocalServer, LocalServer], path: str) -> None:
    a, b = servers
    settings = ToolSettings(egress_allow=[f"127.0.0.1:{a.port}"])
    with pytest.raises(EgressRefusedError, match="not public"):
        await fetch_here(settings, "GET", a.url(path))
    assert b.seen == [] and [s.path for s in a.seen] == [path]


async def test_operator_secret_never_goes_over_plain_http(servers: tuple[LocalServer, LocalServer]) -> None:
    a, b = servers
    settings = ToolSettings(egress_allow=["127.0.0.1"], secrets={f"127.0.0.1:{a.port}": {"Authorization": "Bearer A"}})
    for url in (b.url("/"), a.url("/to-b")):
        tool = http_request_tool(_tool(url, headers={"X-From-Workflow": "1"}), settings, Egress(settings))
        assert tool.run is not None
        assert await tool.run({"code": "A-17"}) == "from B"
    # The key names A's host and port, but the request is http://: secrets go only over https.
    assert "authorization" not in a.seen[0].headers
    assert [s.headers.get("authorization") for s in b.seen] == [None, None]
    # The workflow's own headers went to the host it named, not across the redirect.
    assert b.seen[0].headers.get("x-from-workflow") == "1" and "x-from-workflow" not in b.seen[1].headers
    assert b.seen[0].path == "/?code=A-17"


async def test_responses_are_capped_in_bytes_and_time(servers: tuple[LocalServer, LocalServer]) -> None:
    a, _ = servers
    settings = ToolSettings(egress_allow=["127.0.0.1"], max_response_bytes=1000, http_timeout_s=0.3)
    with pytest.raises(ToolError, match="larger than 1000 bytes"):
        await fetch_here(settings, "GET", a.url("/big"))
    started = time.monotonic()
    with pytest.raises(ToolError, match="timed out after 0.3 s"):
        await fetch_here(settings, "GET", a.url("/slow"))
    assert time.monotonic() - started < 1.0


def _config(tools: list[str], custom: list[dict[str, Any]] | None = None) -> WorkflowConfig:
    return WorkflowConfig.model_validate({"max_steps": 1, "max_time": 1, "tools": tools, "custom_tools": custom})


def test_tool_names_all_unknown_and_unconfigured() -> None:
    nothing = ToolSettings()
    assert build_tools(_config(["ALL"]), nothing, Egress(nothing), 100) == []
    with pytest.raises(ToolError, match="unknown tool 'weather'"):
        build_tools(_config(["weather"]), nothing, Egress(nothing), 100)
    with pytest.raises(ToolError, match="'search' is not available"):
        build_tools(_config(["search"]), nothing, Egress(nothing), 100)
    configured = ToolSettings(search=SearchProvider(kind="searxng", url="http://127.0.0.1:1"), reader_enabled=True)
    http = Egress(configured)
    assert [t.name for t in build_tools(_config(["ALL"]), configured, http, 100)] == ["search", "reader"]
    assert [t.name for t in build_tools(_config(["jina"]), configured, http, 100)] == ["reader"]


async def test_reader_fetches_a_page_as_text(servers: tuple[LocalServer, LocalServer]) -> None:
    a, _ = servers
    reader = _reader()
    assert reader.run is not None
    assert await reader.run({"url": a.url("/page")}) == "Hello\nPlain text here."


def _search_workflow(query: str) -> Any:
    return parse_workflow(
        {
            "config": {"max_steps": 2, "max_time": 10},
            "tasks": [
                {
                    "id": "s",
                    "messages": [{"role": "user", "content": query}],
                    "operator": "search",
                    "outputs": [{"type": "write", "key": "r", "value": "__result"}],
                }
            ],
            "steps": [{"source": "s", "target": "_end"}],
            "return_value": {"input": {"type": "read", "key": "r"}},
        }
    )


async def test_search_operator_with_searxng_and_serper(
    model: BatchedLlamaModel, servers: tuple[LocalServer, LocalServer]
) -> None:
    a, _ = servers
    searxng = ToolSettings(search=SearchProvider(kind="searxng", url=a.url("")))
    result = await run_workflow(_search_workflow('{"query": "lava", "n_results": 3}'), model, tools=searxng)
    assert result.text == "1. Lava\nhttps://e.org/lava\nMolten rock."
    assert a.seen[-1].path == "/search?q=lava&format=json"

    serper = ToolSettings(search=SearchProvider(kind="serper", url=a.url("/serper"), api_key="k-123"))
    result = await run_workflow(_search_workflow("izmir"), model, tools=serper)
    assert result.text.startswith("1. Izmir") and a.seen[-1].headers["x-api-key"] == "k-123"
    assert json.loads(a.seen[-1].body) == {"q": "izmir", "num": 5}

    with pytest.raises(ToolError, match="no search provider configured"):
        await run_workflow(_search_workflow("lava"), model)


async def test_http_tool_example_calls_the_local_server(
    model: BatchedLlamaModel, servers: tuple[LocalServer, LocalServer]
) -> None:
    a, _ = servers
    raw = json.loads((EXAMPLES / "http_tool.json").read_text())
    raw["config"]["custom_tools"][0]["url"] = a.url("/price")
    raw["config"]["max_tokens"] = 40
    settings = ToolSettings(egress_allow=[f"127.0.0.1:{a.port}"])
    # A short argument bound: SmolLM2 may fill a free string until max_tokens (here it writes "1.0.0.1...").
    options = EngineOptions(tool_arg_max_length=12)
    result = await run_workflow(parse_workflow(raw), model, tools=settings, options=options)
    assert result.text == "A-17 costs 42 EUR"
    assert a.seen[0].method == "POST" and set(json.loads(a.seen[0].body)) == {"code"}

    with pytest.raises(ToolError, match="not public"):  # same workflow, loopback not allowed
        await run_workflow(parse_workflow(raw), model, options=options)


async def test_tool_call_raw_example_names_get_weather_with_a_city(model: BatchedLlamaModel) -> None:
    raw = json.loads((EXAMPLES / "tool_call_raw.json").read_text())
    raw["config"]["max_tokens"] = 48
    call = json.loads((await run_workflow(parse_workflow(raw), model)).text)
    assert call["name"] == "get_weather" and isinstance(call["arguments"]["city"], str)

    raw["tasks"][0]["operator"] = "function_calling"  # a `custom` tool cannot be executed
    with pytest.raises(ToolError, match="cannot be executed"):
        await run_workflow(parse_workflow(raw), model)


@pytest.mark.parametrize("body", [b'{"results": null}', b'{"results": "abc"}', b'{"results": [1, 2]}'])
async def test_a_search_answer_of_another_shape_is_a_tool_error_or_no_result(
    model: BatchedLlamaModel, body: bytes
) -> None:
    # was TypeError/AttributeError: `internal error`, and a step's fallback edge not taken
    server = LocalServer({"/search": Route(body=body)})
    try:
        searxng = ToolSettings(search=SearchProvider(kind="searxng", url=server.url("")))
        try:
            result = await run_workflow(_search_workflow("lava"), model, tools=searxng)
        except ToolError as exc:
            assert "unexpected JSON shape" in str(exc)
        else:
            assert "No results" in result.text or result.text == ""
    finally:
        server.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:65536/", "http://127.0.0.1:99999/", "https://127.0.0.1:70000/"])
async def test_a_port_out_of_range_is_a_tool_error(url: str) -> None:
    with pytest.raises(ToolError):  # was ExceptionGroup: `internal error`
        await fetch_here(ToolSettings(egress_allow=["127.0.0.1"]), "GET", url)


async def test_the_reader_reads_a_page_by_its_content_type() -> None:
    server = LocalServer(
        {
            "/plain": Route(body=b"if a<b and c>d then swap", headers={"content-type": "text/plain"}),
            "/json": Route(body=b'{"snippet": "<b>bold</b>"}', headers={"content-type": "application/json"}),
            "/png": Route(body=b"\x89PNG\r\n\x1a\n\x1b[31m", headers={"content-type": "image/png"}),
            "/late": Route(
                body=b"x" * 1200 + b"<script>track()</script><p>Body</p>", headers={"content-type": "text/html"}
            ),
        }
    )
    try:
        reader = _reader()
        assert await reader.run({"url": server.url("/plain")}) == "if a<b and c>d then swap"  # lost "<b and c>"
        assert await reader.run({"url": server.url("/json")}) == '{"snippet": "<b>bold</b>"}'
        with pytest.raises(ToolError, match="not text"):  # was the bytes as mojibake, a terminal escape included
            await reader.run({"url": server.url("/png")})
        late = await reader.run({"url": server.url("/late")})
        assert "track()" not in late and "Body" in late  # was returned raw, its script included
    finally:
        server.close()


def _html(meta: str, text: str, codec: str, pad: int = 0) -> bytes:
    return f"<html><head>{' ' * pad}{meta}<title>t</title></head><body><p>{text}</p></body></html>".encode(codec)


async def test_the_reader_reads_a_page_in_the_charset_its_meta_tag_names() -> None:
    # As browsers do (WHATWG encoding sniffing): with no charset in the Content-Type header, a <meta> charset in
    # the first 1024 bytes picks the codec; a byte order mark wins over both, the header over the meta tag.
    # Was: read as UTF-8, the page's accented letters and kana replaced by U+FFFD.
    french, japanese = "Café déjà vu — 5 €", "日本語のページ"
    html = {"content-type": "text/html"}
    server = LocalServer(
        {
            "/cp1252": Route(body=_html('<meta charset="windows-1252">', french, "cp1252"), headers=html),
            "/sjis": Route(
                body=_html('<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">', japanese, "sjis"),
                headers=html,
            ),
            "/untyped": Route(body=_html("<meta charset=windows-1252>", french, "cp1252")),
            "/header-wins": Route(
                body=_html('<meta charset="shift_jis">', french, "cp1252"),
                headers={"content-type": "text/html; charset=windows-1252"},
            ),
            "/bom-wins": Route(
                body=b"\xef\xbb\xbf" + _html('<meta charset="windows-1252">', french, "utf-8"),
                headers={"content-type": "text/html; charset=shift_jis"},
            ),
            "/past-1024": Route(body=_html('<meta charset="windows-1252">', french, "cp1252", pad=1024), headers=html),
            "/commented": Route(body=_html('<!-- <meta charset="windows-1252"> -->', "déjà", "utf-8"), headers=html),
            "/not-a-text-codec": Route(body=_html('<meta charset="punycode">', "déjà", "utf-8"), headers=html),
            "/plain": Route(
                body=_html('<meta charset="windows-1252">', "déjà", "utf-8"), headers={"content-type": "text/plain"}
            ),
        }
    )
    try:
        reader = _reader()
        assert reader.run is not None
        for path, text in [
            ("/cp1252", french),
            ("/sjis", japanese),
            ("/untyped", french),
            ("/header-wins", french),
            ("/bom-wins", french),
            ("/commented", "déjà"),  # a meta tag in a comment names nothing
            ("/not-a-text-codec", "déjà"),  # only the codecs a header may name
        ]:
            assert await reader.run({"url": server.url(path)}) == text, path
        past = await reader.run({"url": server.url("/past-1024")})  # browsers look no further: read as UTF-8
        assert "\ufffd" in past and french not in past
        plain = await reader.run({"url": server.url("/plain")})  # text/plain: a meta tag in it is text
        assert plain.endswith("<p>déjà</p></body></html>")
    finally:
        server.close()


def test_a_custom_tool_named_as_a_builtin_the_workflow_asks_for_is_refused_on_every_node() -> None:
    from workflows.errors import InvalidToolError

    config = WorkflowConfig.model_validate(
        {
            "max_steps": 1,
            "max_time": 1,
            "tools": ["ALL"],
            "custom_tools": [{"name": "search", "description": "d", "mode": "custom", "parameters": {}}],
        }
    )
    for settings in (ToolSettings(), ToolSettings(search=SearchProvider(kind="searxng", url="http://s.example"))):
        with pytest.raises(InvalidToolError, match="has the name of another tool"):  # was only where search is set
            build_tools(config, settings, Egress(settings), 100)
