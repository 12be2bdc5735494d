"""A tool's HTTP exchange made by the test process itself, as the engine makes it when run alone."""

from __future__ import annotations

from typing import Any

from workflows.egress import Egress
from workflows.options import ToolSettings
from workflows.tool_http import HttpResponse, fetch


async def fetch_here(settings: ToolSettings, method: str, url: str, **kwargs: Any) -> HttpResponse:
    """`fetch` through this process's own egress (egress.py's Egress), capped at the settings' bytes."""
    return await fetch(Egress(settings), settings.max_response_bytes, method, url, **kwargs)
