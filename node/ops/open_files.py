"""The open-files limit: raised to what the system allows, so connections do not run the node out of descriptors.

A shell gives a process 1,024 descriptors; the node's peers, connections still in their
handshake (up to 8 per remote host), the journal, the ledger and the execution processes'
sockets all take one. systemd's unit sets 65,536 (config/compute-node.service); elsewhere
the node raises its soft limit to its hard one (at most `WANTED`) and says when that is low.
"""

from __future__ import annotations

import resource

WANTED = 65_536
LOW = 4_096


def raise_open_files_limit(wanted: int = WANTED) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (never above the hard limit, never lower); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # a container or sandbox that refuses: the limit stays, and the caller says so if it is low
    return soft if soft != resource.RLIM_INFINITY else wanted
