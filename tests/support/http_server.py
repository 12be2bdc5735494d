"""A real HTTP server on 127.0.0.1 answering scripted routes and recording the requests it received."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Route:
    """One scripted answer. `trickle_s`: send the body one byte at a time, this many seconds
    apart; `content_length`: False sends none (the body ends when the connection closes)."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    trickle_s: float = 0.0
    content_length: bool = True


CHUNK = 64 * 1024


class LocalServer:
    """A real HTTP server on 127.0.0.1 that records what it received."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.seen: list[Seen] = []
        self.sent_bytes = 0  # body bytes written, over all answers
        self.hung_up = 0  # answers the client closed before the end of the body
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                server.seen.append(
                    Seen(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        self.rfile.read(length),
                    )
                )
                route = server.routes.get(self.path.split("?")[0], Route(status=404, body=b"not found"))
                time.sleep(route.delay_s)
                self.send_response(route.status)
                for key, value in route.headers.items():
                    self.send_header(key, value.replace("{port}", str(server.port)))
                if route.content_length:
                    self.send_header("content-length", str(len(route.body)))
                self.end_headers()
                step = 1 if route.trickle_s else CHUNK
                try:
                    for start in range(0, len(route.body), step):
                        self.wfile.write(route.body[start : start + step])
                        server.sent_bytes += min(step, len(route.body) - start)
                        if route.trickle_s:
                            self.wfile.flush()
                            time.sleep(route.trickle_s)
                except (BrokenPipeError, ConnectionResetError):
                    server.hung_up += 1  # the client stopped reading and closed

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
