"""The control token: who may pause and resume a running node over its HTTP port.

POST /pause and /resume answer loopback clients only, but every process on the machine is a loopback
client: another user's, or an execution process a workflow took over (its sandbox keeps the network,
for tools and remote engines), which could otherwise pause the node for good (the pause is kept across
restarts). So the daemon writes a random token into its data dir at each start (owner-only, and out of
the execution processes' reach), the endpoints answer only a request that carries it, and
`compute-node pause` reads it from there: whoever can read the node's data dir may pause it.
"""

from __future__ import annotations

import hmac
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path

CONTROL_TOKEN_FILE = "control.token"
CONTROL_HEADER = "x-compute-node-control"


def write_control_token(data_dir: Path) -> str:
    """A new token, written to `<data_dir>/control.token` (0600, atomically: a reader sees the old or the new)."""
    token = secrets.token_hex(32)
    fd, tmp = tempfile.mkstemp(prefix=f".{CONTROL_TOKEN_FILE}.", dir=data_dir)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
        os.replace(tmp, data_dir / CONTROL_TOKEN_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return token


class ControlTokenError(OSError):
    """The token file holds no token (not ASCII); the message names it."""


def read_control_token(data_dir: Path) -> str | None:
    """The running node's token, None where no node has written one (OSError where it cannot be read,
    ControlTokenError where it holds no token)."""
    path = data_dir / CONTROL_TOKEN_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ControlTokenError(
            f"{path} holds no token (not ASCII): a node started from {data_dir} writes it anew"
        ) from None


def carries_token(expected: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the request's headers hold exactly one control header, equal to `expected` (constant time); never
    for an empty `expected`."""
    given = [value for name, value in headers if name.lower() == CONTROL_HEADER.encode()]
    return bool(expected) and len(given) == 1 and hmac.compare_digest(given[0], expected.encode())
