"""The parts of py-libp2p the node leaves out (node/p2p/lean_libp2p.py) refuse use with an error that
names them, and a host without them still listens, dials and gossips. That they stay out of the
daemon's imports: tests/project/test_daemon_imports.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.p2p_hosts import TOPIC, HostFactory, pair, receive

ROOT = Path(__file__).resolve().parents[3]


def in_fresh_process(code: str) -> object:
    """What `code` (which sets `out`) leaves in `out`, run in a new interpreter that first imports
    the P2P layer as the node does (the pytest process may have imported libp2p before it)."""
    child = f"import json, sys\nimport node.p2p.host\n{code}\nprint(json.dumps(out))"
    done = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


USE_LEFT_OUT_PARTS = """
from node.p2p.lean_libp2p import UnavailableFeatureError
from libp2p.discovery.mdns.mdns import create_mdns_discovery
from libp2p.transport.quic.transport import QUICTransport
from libp2p.transport.websocket.transport import WebsocketTransport
out = []
for use in (lambda: QUICTransport(), lambda: create_mdns_discovery(None), lambda: WebsocketTransport(None)):
    try:
        use()
    except UnavailableFeatureError as exc:
        out.append(str(exc))
"""


def test_using_a_left_out_part_raises_an_error_that_names_it() -> None:
    quic, mdns, websocket = in_fresh_process(USE_LEFT_OUT_PARTS)  # type: ignore[misc]
    assert "QUICTransport: py-libp2p's QUIC transport" in quic and "is left out" in quic
    assert "create_mdns_discovery: py-libp2p's mDNS discovery is left out" in mdns
    assert "WebsocketTransport: py-libp2p's WebSocket transport" in websocket and "is left out" in websocket


async def test_two_hosts_still_connect_and_gossip_over_tcp(make_host: HostFactory) -> None:
    a, b, _, qb = await pair(make_host)
    await a.publish(TOPIC, b"over tcp", require_mesh=True)
    assert (await receive(qb)).data == b"over tcp"
