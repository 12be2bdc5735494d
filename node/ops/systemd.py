"""systemd readiness and watchdog notifications (the sd_notify protocol), and socket activation.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a filesystem path or an
abstract ``@name``) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC``. Each
notification is one datagram of ``KEY=VALUE`` lines. Sending never raises:
without systemd the notifier is disabled, and a failed send is only logged.

With a ``.socket`` unit systemd opens the listening socket itself and passes it as
fd 3 (``$LISTEN_FDS``, ``$LISTEN_PID``, the sd_listen_fds protocol). The socket
outlives the service: while it restarts, new connections wait in the socket's
backlog instead of being refused (`inherited_listener`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class SystemdNotifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd; a no-op when not under it."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """Build from ``$NOTIFY_SOCKET`` / ``$WATCHDOG_USEC`` (/ ``$WATCHDOG_PID``)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            log.warning("unsupported NOTIFY_SOCKET, systemd notifications off", address=address)
            address = None
        watchdog_usec: int | None = None
        raw_usec = env.get("WATCHDOG_USEC")
        watchdog_pid = env.get("WATCHDOG_PID")
        # As sd_watchdog_enabled(): the watchdog is ours only if no other pid is named.
        if raw_usec and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            try:
                watchdog_usec = int(raw_usec)
            except ValueError:
                log.warning("invalid WATCHDOG_USEC ignored", value=raw_usec)
        return cls(address, watchdog_usec if watchdog_usec and watchdog_usec > 0 else None)

    def watchdog_interval(self) -> float | None:
        """Seconds between ``watchdog()`` pings: half of ``WatchdogSec``, or None."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self) -> None:
        """Tell systemd start-up is complete."""
        self.notify("READY=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask systemd for `seconds` more of the current state's timeout (TimeoutStartSec while starting)."""
        self.notify(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def status(self, text: str) -> None:
        """Set the one-line status shown by ``systemctl status``."""
        self.notify("STATUS=" + text.replace("\n", " "))

    def watchdog(self) -> None:
        """Keep-alive ping for ``WatchdogSec``."""
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """Tell systemd a graceful shutdown has begun."""
        self.notify("STOPPING=1")

    def notify(self, message: str) -> None:
        """Send one raw notification datagram; logs, never raises."""
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("systemd notify failed", message=message, error=str(exc))

    def close(self) -> None:
        """Close the socket; later notifications are dropped."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


SD_LISTEN_FDS_START = 3


class SocketActivationError(Exception):
    """systemd passed sockets this process cannot serve on (named in the message)."""


def inherited_listener(environ: Mapping[str, str] | None = None) -> socket.socket | None:
    """The listening TCP socket systemd passed to this process, or None when it passed none.

    Takes the first passed socket (fd 3) and removes ``$LISTEN_FDS`` / ``$LISTEN_PID``
    from ``os.environ`` so that child processes do not take it too. Raises
    SocketActivationError when fd 3 is no listening TCP socket.
    """
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return None  # none, or meant for another process (a parent that exec'd us keeps its pid)
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        raise SocketActivationError(f"LISTEN_FDS={env.get('LISTEN_FDS')!r} is not a number") from None
    if environ is None:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if count < 1:
        return None
    if count > 1:
        log.warning("systemd passed more than one socket; serving on the first", count=count)
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise SocketActivationError(f"fd {SD_LISTEN_FDS_START} from systemd is no socket: {exc}") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) or not listening:
        sock.detach()  # not ours to close
        raise SocketActivationError(
            f"fd {SD_LISTEN_FDS_START} from systemd is no listening TCP socket (ListenStream=host:port)"
        )
    sock.set_inheritable(False)
    return sock


def _socket_address(address: str) -> str | bytes:
    if address.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of '@'.
        return b"\0" + address[1:].encode()
    return address
