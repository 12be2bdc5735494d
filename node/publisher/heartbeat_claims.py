"""What a heartbeat claims, made safe to act on: addresses a publisher may dial, numbers within bounds, an
envelope no larger than its body needs. Anyone can make keys that heartbeat; nothing a heartbeat says is
used before it passes here (node_table.py)."""

from __future__ import annotations

import ipaddress
import math

from node.wire.envelope import Envelope, base64_chars
from node.wire.messages import HeartbeatBody, encode_body

MAX_CAPACITY = 1024
MAX_TPS = 1e6
HEARTBEAT_SLACK_BYTES = 4096  # a heartbeat's envelope kept: what its body says twice over, and this (`bulky`)


def dialable_addr(addr: str) -> bool:
    """Whether a heartbeat's multiaddr is one a publisher may dial: an IP (/ip4 or /ip6) that is not unspecified
    (0.0.0.0 and :: reach the publisher's own host), link-local (169.254.0.0/16 holds cloud metadata services),
    multicast or reserved, IPv4-mapped IPv6 judged as its IPv4. Loopback and private addresses stay (tests,
    LANs). Names (/dns4, /dns6, /dns, /dnsaddr) do not: the transport would resolve them, so anyone's
    heartbeat could make a publisher query a name of its choosing and dial what it resolves to (any of the
    above), anew on each dial."""
    parts = addr.split("/")
    if len(parts) < 3 or parts[0] or parts[1] not in ("ip4", "ip6"):
        return False
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # ::1 is in IPv6's reserved ::/8, and loopback stays
    return ip.is_loopback or not (ip.is_unspecified or ip.is_link_local or ip.is_multicast or ip.is_reserved)


def clamp_capacity(value: int) -> int:
    """The capacity within 0 and MAX_CAPACITY."""
    return min(max(value, 0), MAX_CAPACITY)


def clamp_tps(value: float) -> float:
    """The speed within 0 and MAX_TPS (0 if not finite)."""
    return min(max(value, 0.0), MAX_TPS) if math.isfinite(value) else 0.0


def bulky(envelope: Envelope, heartbeat: HeartbeatBody) -> bool:
    """Whether a heartbeat's envelope carries more than twice what its body says, as we write it, and
    HEARTBEAT_SLACK_BYTES. Fields the body does not read are allowed (a newer protocol's), but a red team's ~180 KB
    of one, from 80 keys, made each SDK listing 16.6 MB: 2.6 GB sent to one key in 18 s. (An envelope within the
    slack alone, every honest one, is not encoded again to know.)"""
    size = len(envelope.payload)
    if size <= base64_chars(HEARTBEAT_SLACK_BYTES):
        return False
    return size > base64_chars(2 * len(encode_body(heartbeat)) + HEARTBEAT_SLACK_BYTES)
