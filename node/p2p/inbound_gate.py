"""Inbound connections per remote host: a cap on those open at once and on new ones per minute.

Peer ids are free, so py-libp2p's caps (300 live connections) and the `ConnectionTrimmer`
(idle inbound peers past 200) bound the whole node, not one attacker: a single host could hold
most of the connection budget with fresh keys, or churn connections and make the node pay a
Noise handshake for each. `InboundGate` judges each accepted TCP connection by its remote
host before anything is read from it (before the Noise handshake), and closes it when that
host already has `max_per_host` inbound connections open or opened `new_per_host_per_minute`
in the last minute. A connection stays counted until its socket is closed: open, still in
its handshake, or upgraded and idle (a peer that never opens a stream) alike.

A host is an IPv4 address, or an IPv6 /56 (`host_key`): what an ISP commonly delegates to
one customer, the prefix go-libp2p's resource manager limits; a /64 would give the holder of
a /56 256 times the share. Loopback is a host like any other. Our own dials are not counted.

`end_handlers_with_their_connections`: each inbound connection's handler (py-libp2p keeps it, with
its socket objects, until the whole node stops) ends when its own connection closes.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
import trio
from libp2p.abc import IMuxedConn
from libp2p.io.abc import ReadWriteCloser
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.swarm import Swarm
from multiaddr import Multiaddr
from pydantic import BaseModel, ConfigDict, Field

log = structlog.get_logger(__name__)

IPV6_HOST_PREFIX = 56
RATE_WINDOW_S = 60.0
LOG_EVERY_S = 10.0  # a refused host is logged at most this often (a flood must not flood the log)
SWEEP_EVERY_S = 10.0  # hosts with nothing open and no recent connection are forgotten this often

REFUSED_OPEN = "open"  # the host has max_per_host connections open
REFUSED_RATE = "rate"  # the host opened new_per_host_per_minute in the last minute


class InboundLimits(BaseModel):
    """How many inbound connections one remote host may have open, and open per minute."""

    model_config = ConfigDict(frozen=True)

    max_per_host: int = Field(default=8, ge=1, description="inbound connections open at once from one host")
    new_per_host_per_minute: int = Field(default=30, ge=1, description="new inbound connections per minute")


def host_key(ip: str) -> str:
    """The host an address counts against: an IPv4 address (IPv4-mapped IPv6 too), else its IPv6 /56."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_HOST_PREFIX}", strict=False))
    return str(address)


def _is_open(conn: ReadWriteCloser) -> bool:
    """Whether a raw connection's socket is still open (TCP: libp2p's TrioTCPStream over a trio socket)."""
    sock = getattr(getattr(conn, "stream", None), "socket", None)
    fileno = getattr(sock, "fileno", None)
    return fileno is not None and fileno() != -1


@dataclass
class _Host:
    """What the gate keeps of one remote host."""

    open: list[ReadWriteCloser] = field(default_factory=list)
    recent: deque[float] = field(default_factory=deque)  # accept times within the rate window
    refused_since_log: int = 0
    logged_at: float = float("-inf")


class InboundGate:
    """Admits or refuses each inbound connection by its remote host; counts the refused by reason."""

    def __init__(self, limits: InboundLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._hosts: dict[str, _Host] = {}
        self._swept_at = clock()
        self.refused: dict[str, int] = {REFUSED_OPEN: 0, REFUSED_RATE: 0}

    @property
    def tracked_hosts(self) -> int:
        """Remote hosts the gate remembers now (bounded by the sweep)."""
        return len(self._hosts)

    def open_from(self, ip: str) -> int:
        """Inbound connections open now from the host of `ip`."""
        host = self._hosts.get(host_key(ip))
        return 0 if host is None else sum(1 for conn in host.open if _is_open(conn))

    def let_in(self, conn: ReadWriteCloser) -> str | None:
        """None (counted from now until its socket closes), or why `conn` is refused (REFUSED_*)."""
        remote = conn.get_remote_address()
        if remote is None:
            return None  # not an IP connection: nothing to count it against
        now = self._clock()
        if now - self._swept_at >= SWEEP_EVERY_S:
            self._sweep(now)
        key = host_key(remote[0])
        host = self._hosts.setdefault(key, _Host())
        host.open = [c for c in host.open if _is_open(c)]
        while host.recent and now - host.recent[0] >= RATE_WINDOW_S:
            host.recent.popleft()
        if len(host.open) >= self._limits.max_per_host:
            reason = REFUSED_OPEN
        elif len(host.recent) >= self._limits.new_per_host_per_minute:
            reason = REFUSED_RATE
        else:
            host.open.append(conn)
            host.recent.append(now)
            return None
        self.refused[reason] += 1
        host.refused_since_log += 1
        if now - host.logged_at >= LOG_EVERY_S:
            log.warning(
                "inbound connections refused",
                address=remote[0],
                host=key,
                reason=reason,
                refused=host.refused_since_log,
                open=len(host.open),
                max_per_host=self._limits.max_per_host,
                new_per_host_per_minute=self._limits.new_per_host_per_minute,
            )
            host.logged_at, host.refused_since_log = now, 0
        return reason

    def _sweep(self, now: float) -> None:
        """Forget the hosts with no connection open and none opened or refused within the window."""
        self._swept_at = now
        for key, host in list(self._hosts.items()):
            host.open = [c for c in host.open if _is_open(c)]
            quiet = not host.recent or now - host.recent[-1] >= RATE_WINDOW_S
            if not host.open and quiet and now - host.logged_at >= RATE_WINDOW_S:
                del self._hosts[key]


InboundHandler = Callable[[ReadWriteCloser, Multiaddr], Awaitable[None]]


def install_gate(swarm: Swarm, gate: InboundGate) -> None:
    """Put `gate` in front of the swarm's inbound handler (before its caps, the Noise handshake and the upgrade).

    py-libp2p's listeners call `swarm._handle_inbound_connection` for each accepted connection; its
    own connection gate sees only allow/deny lists of addresses, not the connection to count.
    """
    handle: InboundHandler = swarm._handle_inbound_connection

    async def gated(conn: ReadWriteCloser, listen_addr: Multiaddr) -> None:
        if gate.let_in(conn) is not None:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001 - the peer may have gone already
                pass
            return
        await handle(conn, listen_addr)

    swarm._handle_inbound_connection = gated  # type: ignore[method-assign,assignment]


def end_handlers_with_their_connections(swarm: Swarm) -> None:
    """Let each inbound connection's handler task end when that connection closes, not when the swarm stops.

    py-libp2p 0.8.1's `Swarm._do_handle_inbound_connection` upgrades the connection, then parks in
    `await self.manager.wait_finished()` (trio's `serve_listeners` closes the socket when the handler
    returns, so it must wait for something): one Trio task, with its RawConnection, TCP stream and socket
    objects, for every inbound connection ever accepted, kept until the node stops. This handler waits for
    its own connection's `event_closed` instead. Pre-multiplexed transports (QUIC, not run here) keep
    py-libp2p's path.
    """
    original = swarm._do_handle_inbound_connection

    async def handle(conn: ReadWriteCloser, maddr: Multiaddr, failure_event: object) -> None:
        if isinstance(conn, IMuxedConn):
            await original(conn, maddr, failure_event)  # type: ignore[arg-type]
            return
        remote = swarm._build_remote_multiaddr(conn)
        if remote is not None and not await swarm.connection_gate.is_allowed(remote):
            await _close_quietly(conn)
            return
        raw_conn = RawConnection(conn, False)
        try:
            muxed = await swarm.upgrade_inbound_raw_conn(raw_conn, maddr)
        except Exception as exc:  # noqa: BLE001 - as py-libp2p: a failed upgrade closes the connection
            log.debug("inbound connection not upgraded", error=str(exc))
            await _close_quietly(raw_conn)
            return
        peer = getattr(muxed, "peer_id", None)
        for swarm_conn in list(swarm.connections.get(peer, [])) if peer is not None else []:
            if isinstance(swarm_conn, SwarmConn) and swarm_conn.muxed_conn is muxed:
                await swarm_conn.event_closed.wait()
                return
        # Not registered (refused by add_conn, or closed already): nothing to keep open.

    swarm._do_handle_inbound_connection = handle  # type: ignore[method-assign,assignment]


async def _close_quietly(conn: ReadWriteCloser) -> None:
    try:
        await conn.close()
    except Exception:  # noqa: BLE001 - the peer may have gone already
        pass
    await trio.lowlevel.checkpoint()
