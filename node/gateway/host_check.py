"""The `Host` header check of a gateway without API keys (ASGI middleware): DNS rebinding stops here.

Without keys the gateway listens on loopback only and trusts every caller. A web
page can still reach it by rebinding its own name to 127.0.0.1: the browser then
sends the attacker's name as `Host`. So such a gateway answers only requests
whose `Host` is a loopback name (`127.0.0.1`, `localhost`, `[::1]`, any port);
others get 421 and a message naming the header.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from node.gateway.limits import ErrorBody, plain_error
from node.ops.http_api import LOOPBACK_HOST


class LoopbackHostMiddleware:
    """Answer 421 to HTTP requests whose `Host` header is not a loopback name."""

    def __init__(self, app: ASGIApp, error_body: ErrorBody = plain_error) -> None:
        self.app = app
        self.error_body = error_body  # the answer's body by path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass HTTP requests for a loopback Host on; answer the others 421."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [value for name, value in scope.get("headers", []) if name == b"host"]
        host = hosts[0].decode("latin-1") if len(hosts) == 1 else None
        if host is not None and LOOPBACK_HOST.match(host):
            await self.app(scope, receive, send)
            return
        shown = "missing" if not hosts else "repeated" if len(hosts) > 1 else repr(host[:100] if host else host)
        detail = (
            f"Host header {shown}: this gateway has no api_keys and answers only 127.0.0.1, localhost "
            "or [::1] (set api_keys to serve other names)"
        )
        payload = self.error_body(scope["path"], 421, detail)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 421, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
