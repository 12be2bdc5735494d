"""Peer addresses: read (`peer_info`), and their host names looked up as every other program on the host does.

py-libp2p resolves `/dns`, `/dns4` and `/dns6` with dnspython, which asks DNS servers only, so a name
from /etc/hosts (`localhost`, Docker's `extra_hosts`, Kubernetes' `hostAliases`) or any other NSS
source fails to dial. `P2PService.connect` (bootstrap and static peers, a publisher's `--peer`, the
doctor) looks such names up here with the system resolver (`getaddrinfo`) and dials the addresses it
gives. `/dnsaddr` (a TXT record, DNS by definition) is left to py-libp2p. Names never come from peers:
publishers drop them from heartbeat addresses (node/publisher/heartbeat_claims.py, `dialable_addr`).
"""

from __future__ import annotations

import socket

import multiaddr
import trio
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from node.p2p.errors import P2PServiceError

MAX_ADDRS = 8  # of one name's addresses, in the resolver's order (RFC 6724's preference)
_FAMILIES = {"dns": socket.AF_UNSPEC, "dns4": socket.AF_INET, "dns6": socket.AF_INET6}


class NameLookupError(Exception):
    """The system resolver has no address for a name in a peer address."""


def peer_info(addr: str) -> PeerInfo:
    """The peer id and address of `addr` (.../p2p/<id>); P2PServiceError naming what is wrong (py-libp2p said
    "The last protocol should be `P_P2P` (421) instead of `6`" of an address without its /p2p/ part)."""
    if "/p2p/" not in addr:
        raise P2PServiceError(f"{addr!r} names no peer (expected /ip4/HOST/tcp/PORT/p2p/PEER_ID)")
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:  # noqa: BLE001 - py-libp2p and multiaddr raise many kinds
        raise P2PServiceError(f"invalid peer multiaddr {addr!r}: {exc}") from exc


async def looked_up(addr: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    """`addr` with its leading `/dns`, `/dns4` or `/dns6` name replaced by each address the system
    resolver gives (at most MAX_ADDRS); any other address as it is. Cancellable (a resolver that
    hangs is abandoned with the caller's timeout)."""
    _, kind, name, rest = (str(addr).split("/", 3) + ["", "", ""])[:4]
    family = _FAMILIES.get(kind)
    if family is None:
        return [addr]
    try:
        answers = await trio.socket.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise NameLookupError(f"cannot look up {name!r}: {reason}") from None
    found: list[multiaddr.Multiaddr] = []
    for answer_family, _, _, _, sockaddr in answers:
        ip = str(sockaddr[0])
        if "%" in ip:  # a link-local address with its zone: no form of it a multiaddr dials
            continue
        looked = multiaddr.Multiaddr(f"/{'ip6' if answer_family == socket.AF_INET6 else 'ip4'}/{ip}/{rest}")
        if looked not in found:
            found.append(looked)
    if not found:
        raise NameLookupError(f"cannot look up {name!r}: no address of the asked family")
    return found[:MAX_ADDRS]
