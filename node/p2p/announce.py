"""The addresses a node advertises for direct delivery: dialable ones, each ending in /p2p/<its id>.

A listen address on 0.0.0.0 (or ::) is not dialable: it is expanded to this host's
interface addresses (loopback last, so a remote publisher tries a reachable one first).
Configured announce addresses replace the listen addresses. At most `limit` are kept.
"""

from __future__ import annotations

import ipaddress
import socket

import psutil

from node.wire.topics import MAX_ADDR_CHARS, MAX_HEARTBEAT_ADDRS

UNSPECIFIED = {"ip4": "0.0.0.0", "ip6": "::"}


def interface_ips(family: str) -> list[str]:
    """This host's addresses of `family` ("ip4" or "ip6"), loopback and link-local last."""
    wanted = socket.AF_INET if family == "ip4" else socket.AF_INET6
    found = [
        address.address.split("%")[0]
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == wanted
    ]
    ips = [ipaddress.ip_address(ip) for ip in dict.fromkeys(found)]
    return [str(ip) for ip in sorted(ips, key=lambda ip: (ip.is_loopback or ip.is_link_local, str(ip)))]


def advertised_addrs(
    listen_addrs: list[str], peer_id: str, announce: list[str] | None = None, limit: int = MAX_HEARTBEAT_ADDRS
) -> list[str]:
    """Dialable multiaddrs of this node with `/p2p/<peer_id>`: `announce` if given, else the
    listen addresses with unspecified hosts expanded; deduplicated, at most `limit`."""
    suffix = f"/p2p/{peer_id}"
    out: list[str] = []
    for addr in announce or listen_addrs:
        base = addr.split("/p2p/")[0].rstrip("/")
        parts = base.split("/")  # ["", "ip4", "0.0.0.0", "tcp", "4001"]
        if len(parts) > 2 and parts[1] in UNSPECIFIED and parts[2] == UNSPECIFIED[parts[1]]:
            bases = ["/".join(["", parts[1], ip, *parts[3:]]) for ip in interface_ips(parts[1])]
        else:
            bases = [base]
        out.extend(b + suffix for b in bases if len(b + suffix) <= MAX_ADDR_CHARS)
    return list(dict.fromkeys(out))[:limit]
