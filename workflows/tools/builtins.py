"""Built-in tools the operator can configure: web `search` and the page `reader`."""

from __future__ import annotations

import asyncio
import html.parser
import json
from typing import Any, ClassVar

from workflows.errors import ToolError
from workflows.options import SearchProvider, ToolSettings
from workflows.tool_http import ToolHttp, fetch
from workflows.tools.base import Tool

DEFAULT_RESULTS = 5
MAX_RESULTS = 20


async def web_search(settings: ToolSettings, http: ToolHttp, query: str, n_results: int = DEFAULT_RESULTS) -> str:
    """Search through the configured provider; results as numbered text."""
    provider = settings.search
    if provider is None:
        raise ToolError("the search tool is not available: this node has no search provider configured")
    if not query.strip():
        raise ToolError("search: empty query")
    n = max(1, min(n_results, MAX_RESULTS))
    hits = await (
        _searxng(settings, http, provider, query)
        if provider.kind == "searxng"
        else _serper(settings, http, provider, query, n)
    )
    if not hits:
        return "No results."
    return "\n\n".join(
        f"{i}. {title}\n{url}\n{snippet}".rstrip() for i, (title, url, snippet) in enumerate(hits[:n], 1)
    )


async def _searxng(
    settings: ToolSettings, http: ToolHttp, provider: SearchProvider, query: str
) -> list[tuple[str, str, str]]:
    data = await _json(settings, http, "GET", provider.endpoint, params={"q": query, "format": "json"})
    return _hits(data, "results", "url", "content")


async def _serper(
    settings: ToolSettings, http: ToolHttp, provider: SearchProvider, query: str, n: int
) -> list[tuple[str, str, str]]:
    # The API key is the daemon's to add (egress.py): it never reaches the process that runs the workflow.
    data = await _json(settings, http, "POST", provider.endpoint, json_body={"q": query, "num": n})
    return _hits(data, "organic", "link", "snippet")


def _hits(data: dict[str, Any], key: str, url: str, snippet: str) -> list[tuple[str, str, str]]:
    """(title, url, snippet) of each result object; a provider's odd shape is a ToolError, not a crash."""
    results = data.get(key)
    if results is None:
        return []
    if not isinstance(results, list):
        raise ToolError("search provider answered an unexpected JSON shape")

    def text(value: object) -> str:
        return value if isinstance(value, str) else ""

    return [(text(r.get("title")), text(r.get(url)), text(r.get(snippet))) for r in results if isinstance(r, dict)]


async def _json(settings: ToolSettings, http: ToolHttp, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    # The provider URL is operator-configured, so its first hop is trusted (a search request goes nowhere else).
    response = await fetch(http, settings.max_response_bytes, method, url, search=True, **kwargs)
    if response.status >= 400:
        raise ToolError(f"search provider answered HTTP {response.status}")
    try:
        data = json.loads(response.text)
    except ValueError:
        raise ToolError("search provider answered something that is not JSON") from None
    if not isinstance(data, dict):
        raise ToolError("search provider answered an unexpected JSON shape")
    return data


def search_tool(settings: ToolSettings, http: ToolHttp, max_length: int) -> Tool:
    """The web search tool."""

    async def run(arguments: dict[str, Any]) -> str:
        return await web_search(settings, http, str(arguments.get("query", "")))

    return Tool(
        name="search",
        description="Search the web; returns titles, URLs and snippets",
        parameters={
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": max_length}},
            "required": ["query"],
        },
        run=run,
    )


class _TextExtractor(html.parser.HTMLParser):
    """Visible text of an HTML page (script, style and head dropped)."""

    _SKIP: ClassVar[frozenset[str]] = frozenset({"script", "style", "head", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._SKIP:
            self._skipping += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping and data.strip():
            self.parts.append(data.strip())


_HTML = frozenset({"text/html", "application/xhtml+xml"})
_TEXT_TYPES = frozenset({"application/json", "application/xml", "application/javascript", "application/x-ndjson"})


def _is_text(media: str) -> bool:
    return media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml"))


def html_to_text(page: str) -> str:
    """The text of an HTML page."""
    extractor = _TextExtractor()
    extractor.feed(page)
    return "\n".join(extractor.parts)


def reader_tool(settings: ToolSettings, http: ToolHttp, name: str) -> Tool:
    """The tool that fetches a page by URL and returns its text."""

    async def run(arguments: dict[str, Any]) -> str:
        url = str(arguments.get("url", ""))
        response = await fetch(http, settings.max_response_bytes, "GET", url)
        if response.status >= 400:
            raise ToolError(f"reader: the page answered HTTP {response.status}")
        media = response.content_type
        if media and media not in _HTML and not _is_text(media):
            raise ToolError("reader: the page is not text (its content type is neither HTML nor text)")
        if media not in _HTML and (media or "<" not in response.text[:1000]):
            return response.text  # text/plain, JSON, XML, CSV: as sent
        # A page of up to tool_max_bytes takes the pure-Python parser a while: not on the event loop.
        return await asyncio.to_thread(html_to_text, response.text)

    return Tool(
        name=name,
        description="Fetch a web page by URL and return its text",
        parameters={"type": "object", "properties": {"url": {"type": "string", "maxLength": 300}}, "required": ["url"]},
        run=run,
    )
