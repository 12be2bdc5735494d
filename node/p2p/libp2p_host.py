"""The libp2p host as the service runs it: TCP + Noise + Yamux on checked listen addresses, its swarm bounded.

Each function is one step of service.py's start, with the py-libp2p behaviour it works around commented
where it is made: the listen addresses parsed and their fixed ports probed (`listen_multiaddrs`), the host
made without the ping handler (`new_libp2p_host`), its swarm bounded before it listens or dials
(`bound_the_swarm`), the listeners checked once it runs (`check_listening`), and py-libp2p's inbound cap
lifted (`lift_inbound_cap`). Everything here runs on the Trio thread.
"""

from __future__ import annotations

import math
import socket

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.network.config import RetryConfig
from libp2p.network.swarm import Swarm
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from node.p2p.bounded_peerstore import BoundedPeerStore
from node.p2p.bounded_yamux import MuxerLimits, MuxerRefusals, install_bounded_muxer
from node.p2p.errors import P2PServiceError
from node.p2p.inbound_gate import InboundGate, end_handlers_with_their_connections, install_gate


def listen_multiaddrs(listen_addrs: list[str]) -> list[multiaddr.Multiaddr]:
    """`listen_addrs` parsed, each fixed TCP port found free; P2PServiceError names the first that is not."""
    maddrs = []
    for addr in listen_addrs:
        try:
            maddr = multiaddr.Multiaddr(addr)
        except Exception as exc:
            raise P2PServiceError(f"invalid listen multiaddr {addr!r}: {exc}") from exc
        _probe_port_free(addr, maddr)
        maddrs.append(maddr)
    return maddrs


def _probe_port_free(addr: str, maddr: multiaddr.Multiaddr) -> None:
    """Fail when a fixed TCP port is taken.

    libp2p binds with SO_REUSEPORT, so a second host on a busy port would
    silently share it; a plain bind (SO_REUSEADDR only) still fails then.
    """
    protocols = {p.name for p in maddr.protocols()}
    if "tcp" not in protocols or int(maddr.value_for_protocol("tcp")) == 0:
        return
    family, ip_proto = (socket.AF_INET6, "ip6") if "ip6" in protocols else (socket.AF_INET, "ip4")
    if ip_proto not in protocols:
        return
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((maddr.value_for_protocol(ip_proto), int(maddr.value_for_protocol("tcp"))))
        except OSError as exc:
            raise P2PServiceError(f"cannot listen on {addr}: {exc.strerror or exc}") from exc


def new_libp2p_host(key_pair: KeyPair, maddrs: list[multiaddr.Multiaddr]) -> IHost:
    """A host of `key_pair` (TCP + Noise + Yamux, a bounded peerstore) to listen on `maddrs`, without ping."""
    noise_key = create_x25519_key_pair().private_key
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=noise_key)},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        peerstore_opt=BoundedPeerStore(),
        listen_addrs=maddrs,
    )
    # libp2p ping (/ipfs/ping/1.0.0), which nothing here uses, echoes each 32 bytes a peer sends as a frame of its
    # own: 64 KiB of pings cost the P2P thread ~0.5 s (~260 us a ping), so ~120 KB/s from one peer would fill it.
    host.remove_stream_handler(PING_PROTOCOL_ID)
    return host


def bound_the_swarm(
    network: Swarm, muxer_limits: MuxerLimits, refusals: MuxerRefusals, gate: InboundGate | None
) -> None:
    """Before listening or dialling: every connection's muxer bounded, one connection a dial, each handler ended
    with its connection, and (a node) inbound connections gated per remote host."""
    install_bounded_muxer(network, muxer_limits, refusals)
    # One dial, one connection: py-libp2p retries each failed dial 3 times by default (0.1 + 0.2 + 0.4 s), so
    # every dial of ours, each already paced (the connector's backoff, the gossip keeper's, a publisher's
    # undialable marks), was 4 connections to its host:port and 0.7 s before a dead node counted as such.
    network.retry_config = RetryConfig(max_retries=0)
    end_handlers_with_their_connections(network)
    if gate is not None:
        install_gate(network, gate)


def check_listening(host: IHost, listen_addrs: list[str], maddrs: list[multiaddr.Multiaddr]) -> None:
    """P2PServiceError naming the addresses of `listen_addrs` the running host does not listen on."""
    listeners = host.get_network().listeners
    missing = [addr for addr, m in zip(listen_addrs, maddrs) if str(m) not in listeners]
    if missing:
        raise P2PServiceError(f"cannot listen on {', '.join(missing)}")


def lift_inbound_cap(network: Swarm) -> None:
    """Lift py-libp2p's inbound cap (250 slots): it releases a slot only when the swarm stops, not when its
    connection closes, so after 250 inbound connections in all, however short, no peer could connect again.
    The live count stays bounded by its max_connections check and by the trimmer (connection_trim.py)."""
    network._inbound_limiter = trio.CapacityLimiter(math.inf)
