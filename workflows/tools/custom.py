"""Workflow-defined tools: `custom` (call-only) and `http_request`."""

from __future__ import annotations

import json
from typing import Any

from workflows.errors import ToolError
from workflows.options import ToolSettings
from workflows.schema import CustomFunctionTool, HttpRequestTool
from workflows.tool_http import ToolHttp, fetch
from workflows.tools.base import Tool


def custom_tool(spec: CustomFunctionTool) -> Tool:
    """A tool the model may name; it cannot be executed by this node."""
    return Tool(name=spec.name, description=spec.description, parameters=spec.parameters)


def http_request_tool(spec: HttpRequestTool, settings: ToolSettings, http: ToolHttp) -> Tool:
    """A tool that sends the model's arguments to the workflow's URL."""
    parameters = {
        "type": "object",
        "properties": {key: {"type": "string", "description": about} for key, about in spec.body.items()},
        "required": list(spec.body),
    }

    async def run(arguments: dict[str, Any]) -> str:
        values = {key: _as_text(arguments.get(key, "")) for key in spec.body}
        as_query = spec.method in ("GET", "DELETE")
        response = await fetch(
            http,
            settings.max_response_bytes,
            spec.method,
            spec.url,
            headers=spec.headers,
            params=values if as_query else None,
            json_body=None if as_query else values,
        )
        if response.status >= 400:
            raise ToolError(f"tool {spec.name!r}: the server answered HTTP {response.status}")
        return response.text

    return Tool(name=spec.name, description=spec.description, parameters=parameters, run=run)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
