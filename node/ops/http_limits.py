"""What an HTTP client may hold of a server for free: its connections, bounded in time and in number.

`bounded_protocol`: uvicorn's h11 protocol that closes a connection whose request head has not
arrived within a time limit of its opening (or of its previous response), aborts one whose client
has not taken enough of its response for that long for the server to write again (the transport's
buffer stayed full), and keeps at most `max_connections` open: past it, a new connection closes the
oldest one the server owes nothing (waiting for a request head: a client that sent nothing, or part
of a head; or answered while the client still owes a request body nobody reads), or is itself closed
when every connection is in a request.

uvicorn itself waits for a head, for a body, and for a reader, forever, and holds any number of
connections: a client holding connections open by sending nothing, or a byte now and then
(slowloris), or a streamed answer's reader that stops reading, held the server's sockets for good.
A red team's 20,000 idle connections to a node's endpoint took every descriptor of the daemon: no
publisher could dial it until they closed, and asyncio logged each refused accept (a million
traceback lines, 370 MB, in two minutes). The timeout alone does not bound them: a client that
reconnects within it holds as many as it opens.

A request whose head parses and whose body does not (a broken chunk) is answered 400 and closed by uvicorn,
which then logged the app's answer to it as an ERROR with its traceback ("Exception in ASGI application", h11
refusing a second response), and when the app had answered already, asyncio logged one more ("Fatal error:
protocol.data_received() call failed"): two tracebacks any client could have written per request. Here the
request ends as a client's disconnect does (the app's sends are dropped), and an answer already begun is
followed by no 400: the connection closes.
"""

from __future__ import annotations

import asyncio
import resource

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# A server's connections at most this share of the process's open-files limit (the rest: its peers, files).
FD_SHARE = 4


def connection_cap(wanted: int) -> int:
    """`wanted`, or a quarter of the open-files soft limit where that is less (at least 1)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft // FD_SHARE))


def bounded_protocol(timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol closing connections whose request head has not come within `timeout_s`, or
    whose client took none of the response for `timeout_s` while the server had some to write, and
    keeping at most `max_connections` open (see the module doc)."""

    class BoundedProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None
        _opened_at = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._opened_at = self.loop.time()
            if len(self.connections) > max_connections and not self._close_oldest_waiting():
                self.transport.abort()  # every other connection is in a request: this one waits for none
                return
            self._await_head()

        def _close_oldest_waiting(self) -> bool:
            """Close the oldest other connection waiting for a request head, or answered while the client
            still owes its request's body (which the app never read); False if there is none."""
            waiting = [
                other
                for other in self.connections
                if other is not self
                and isinstance(other, BoundedProtocol)
                and _awaits_nothing_of_ours(other)
                and not other.transport.is_closing()
            ]
            if not waiting:
                return False
            oldest = min(waiting, key=lambda other: other._opened_at)
            oldest.transport.abort()  # its descriptor goes now, not when a close's unsent bytes would have
            return True

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._opened_at = self.loop.time()  # waiting for a head again: as old as that wait
            self._await_head()  # the next request's (uvicorn's keep-alive timeout ends only a silent wait)

        def send_400_response(self, msg: str) -> None:
            if self.cycle is not None:  # its request is over: the app's answer goes nowhere, as after a disconnect
                self.cycle.disconnected = True
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                super().send_400_response(msg)
            else:
                self.transport.close()  # an answer already begun: no 400 can follow it

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in (self._head_timer, self._write_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        def pause_writing(self) -> None:  # the transport's buffer is full: the client takes nothing
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(timeout_s, self._write_overdue)

        def resume_writing(self) -> None:
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None
            super().resume_writing()

        def _write_overdue(self) -> None:
            self._write_timer = None
            self.transport.abort()  # close() would wait for the unsent bytes; the app hears the disconnect

        def _await_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(timeout_s, self._head_overdue)

        def _head_overdue(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no request began in time: nothing to answer

    return BoundedProtocol


def _awaits_nothing_of_ours(protocol: H11Protocol) -> bool:
    """Whether the server owes this connection nothing: it waits for a request's head, or its request was
    answered and the client still owes a body nobody reads (a `Content-Length` it never sends, held until
    uvicorn's keep-alive timeout: 64 such connections every 5 s held the node's endpoint)."""
    conn = protocol.conn
    return conn.their_state is h11.IDLE or (conn.our_state is h11.DONE and conn.their_state is h11.SEND_BODY)
