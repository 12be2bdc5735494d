"""Turning a workflow's `config.tools` and `custom_tools` into Tool objects."""

from __future__ import annotations

from workflows.errors import InvalidToolError, ToolError
from workflows.options import ToolSettings
from workflows.schema import CustomFunctionTool, WorkflowConfig
from workflows.tool_http import ToolHttp
from workflows.tools.base import Tool
from workflows.tools.builtins import reader_tool, search_tool
from workflows.tools.custom import custom_tool, http_request_tool

KNOWN_BUILTINS = ("search", "jina", "reader", "stock", "scraper")


def configured_builtins(settings: ToolSettings, http: ToolHttp, max_length: int) -> dict[str, Tool]:
    """The built-in tools this node has configured, by name; their requests go through `http`."""
    tools: dict[str, Tool] = {}
    if settings.search is not None:
        tools["search"] = search_tool(settings, http, max_length)
    if settings.reader_enabled:
        tools["reader"] = reader_tool(settings, http, "reader")
    return tools


def build_tools(config: WorkflowConfig, settings: ToolSettings, http: ToolHttp, max_length: int) -> list[Tool]:
    """The tools a task may use; unknown or unconfigured names fail clearly."""
    available = configured_builtins(settings, http, max_length)
    chosen: dict[str, Tool] = {}
    for name in config.tools:
        if name == "ALL":
            chosen.update(available)
            continue
        canonical = "reader" if name == "jina" else name
        if canonical in available:
            chosen[canonical] = available[canonical]
        elif name in KNOWN_BUILTINS:
            raise ToolError(f"tool {name!r} is not available: this node has not configured it")
        else:
            raise InvalidToolError(f"unknown tool {name!r} (built-ins: {', '.join(KNOWN_BUILTINS)}, ALL)")
    # Names the workflow asked for, whether or not this node configured them: the same clash on every node.
    builtin_names = {"reader" if n == "jina" else n for n in config.tools}
    if "ALL" in config.tools:
        builtin_names |= set(KNOWN_BUILTINS) - {"jina"}
    for spec in config.custom_tools:
        if spec.name in chosen or spec.name in builtin_names:
            raise InvalidToolError(f"custom tool {spec.name!r} has the name of another tool")
        chosen[spec.name] = (
            custom_tool(spec) if isinstance(spec, CustomFunctionTool) else http_request_tool(spec, settings, http)
        )
    return list(chosen.values())
