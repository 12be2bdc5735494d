"""How a tool reaches the web: the request it makes, the answer it gets, and the channel between them.

A tool never opens a socket itself. It hands a `ToolRequest` to a `ToolHttp` channel: in the node, the
execution process's channel to the daemon (node/execution/tool_channel.py), which makes the request under
the operator's egress policy (egress.py) and holds the operator's secrets; run in-process, egress.py's
`Egress`. What comes back is the body as received (`RawResponse`), which `fetch` decodes here,
where the workflow runs (response_text.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workflows.errors import ToolError
from workflows.response_text import body_text, media_type

# Bounds on a request, which the daemon reads from a process that may have been taken over: every field is text
# of a bounded length (no JSON structure to walk), so a request costs the daemon no more than its bytes.
MAX_URL_CHARS = 16 * 1024
MAX_FIELDS = 64  # headers, and query parameters
MAX_NAME_CHARS = 256
MAX_VALUE_CHARS = 16 * 1024
MAX_BODY_CHARS = 1024 * 1024
_Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
_Value = Annotated[str, Field(max_length=MAX_VALUE_CHARS)]


class ToolRequest(BaseModel):
    """One HTTP request a tool makes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["GET", "POST", "PUT", "DELETE"]
    url: str = Field(max_length=MAX_URL_CHARS)
    headers: dict[_Name, _Value] = Field(default_factory=dict, max_length=MAX_FIELDS)
    params: dict[_Name, _Value] = Field(default_factory=dict, max_length=MAX_FIELDS)
    json_body: str | None = Field(default=None, max_length=MAX_BODY_CHARS)  # JSON text, sent as application/json
    # To the operator's search provider: its first hop may be a private address, and carries its API key.
    search: bool = False


class RawResponse(BaseModel):
    """An answer as received: status, the URL it came from (after redirects), two headers and the body
    before any Content-Encoding is undone (at most the operator's `tool_max_bytes`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    status: int = Field(ge=100, le=999)
    url: str = Field(max_length=MAX_URL_CHARS)
    content_type: str = Field(default="", max_length=MAX_VALUE_CHARS)
    content_encoding: str = Field(default="", max_length=MAX_VALUE_CHARS)
    body: bytes = b""


@dataclass
class HttpResponse:
    """A tool's HTTP answer: status, URL and body text."""

    status: int
    url: str
    text: str
    content_type: str = ""  # the media type, lowercased, without parameters ("" when none was sent)


class ToolHttp(Protocol):
    """Where tool requests go."""

    async def send(self, request: ToolRequest) -> RawResponse:
        """The answer to `request`; ToolError (EgressRefusedError for a refused address) when there is none."""
        ...


async def fetch(
    http: ToolHttp,
    limit: int,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    json_body: object = None,
    search: bool = False,
) -> HttpResponse:
    """One HTTP exchange through `http`, its body decoded as text of at most `limit` bytes."""
    try:
        request = ToolRequest(
            method=method,  # type: ignore[arg-type]  # checked by the model
            url=url,
            headers=headers or {},
            params=params or {},
            json_body=None if json_body is None else json.dumps(json_body, ensure_ascii=False, allow_nan=False),
            search=search,
        )
    except (ValidationError, ValueError, TypeError) as exc:
        if not isinstance(exc, ValidationError):
            raise ToolError("tool request: a body that is not JSON") from None
        field = ".".join(str(part) for part in exc.errors()[0]["loc"]) or "request"
        raise ToolError(f"tool request: invalid {field}") from None  # no value quoted: it may be task data
    raw = await http.send(request)
    text = body_text(raw.body, raw.content_type, raw.content_encoding, limit)
    return HttpResponse(raw.status, raw.url, text, media_type(raw.content_type))
