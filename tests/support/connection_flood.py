"""Many peer ids connecting to one node and doing nothing: bare py-libp2p hosts in one Trio thread.

`connection_flood(addr, count)` dials `addr` from `count` fresh identities (each its own
host: TCP, Noise, Yamux, as a node's peers speak it) and keeps every connection open,
idle, until the context exits; `Flood.connected` counts the dials that succeeded.
`source_ip` (a loopback address such as 127.0.0.2): the hosts listen and dial from it, one
remote host to the node.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.tcp.tcp import TCP

DIAL_TIMEOUT_S = 30.0
LOOPBACK_IP = "127.0.0.1"


@dataclass
class Flood:
    """What the flood did so far (read from the event loop; written by the Trio thread)."""

    count: int
    connected: int = 0
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def settled(self) -> bool:
        return self.connected + self.failed == self.count


def dial_from(transport: TCP, source_ip: str) -> None:
    """Make `transport` dial from `source_ip` (the kernel would pick 127.0.0.1 for any loopback peer)."""

    async def dial(maddr: multiaddr.Multiaddr) -> object:
        return await transport._dial_resolved(maddr, source=(source_ip, 0))

    transport.dial = dial  # type: ignore[method-assign,assignment]


async def _idle_peer(addr: str, flood: Flood, source_ip: str) -> None:
    key_pair = create_new_key_pair(secrets.token_bytes(32))
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    listen = multiaddr.Multiaddr(f"/ip4/{source_ip}/tcp/0")
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=[listen],
    )
    for transport in host.get_network().transport_manager.get_transports():
        if isinstance(transport, TCP):
            dial_from(transport, source_ip)
    async with host.run([listen]):
        try:
            with trio.fail_after(DIAL_TIMEOUT_S):
                await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
            flood.connected += 1
        except Exception:  # noqa: BLE001 - refused or trimmed: counted, the flood goes on
            flood.failed += 1
        while not flood.stop.is_set():
            await trio.sleep(0.2)


async def _run(addr: str, flood: Flood, source_ip: str) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(flood.count):
            nursery.start_soon(_idle_peer, addr, flood, source_ip)


@asynccontextmanager
async def connection_flood(addr: str, count: int, source_ip: str = LOOPBACK_IP) -> AsyncIterator[Flood]:
    """`count` idle peers connected to `addr` (a /p2p/ multiaddr) from `source_ip` while the context is open."""
    flood = Flood(count)
    thread = threading.Thread(
        target=trio.run, args=(_run, addr, flood, source_ip), name="connection-flood", daemon=True
    )
    thread.start()
    try:
        yield flood
    finally:
        flood.stop.set()
        await asyncio.to_thread(thread.join, 30.0)
