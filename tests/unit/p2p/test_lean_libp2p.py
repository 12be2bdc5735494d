"""The parts of py-libp2p the node leaves out (node/p2p/lean_libp2p.py) stay out, refuse use with an
error that names them, and a host without them still listens, dials and gossips."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from node.p2p.host import P2PHost

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


def test_a_fresh_process_loads_none_of_the_left_out_packages() -> None:
    loaded = set(in_fresh_process("import libp2p\nout = sorted({n.split('.')[0] for n in sys.modules})"))  # type: ignore[arg-type]
    assert "libp2p" in loaded and "multiaddr" in loaded
    assert sorted(loaded & {"aioquic", "zeroconf", "requests", "httpx"}) == []


USE_LEFT_OUT_PARTS = """
from node.p2p.lean_libp2p import UnavailableFeatureError
from libp2p.discovery.mdns.mdns import create_mdns_discovery
from libp2p.transport.quic.transport import QUICTransport
out = []
for use in (lambda: QUICTransport(), lambda: create_mdns_discovery(None)):
    try:
        use()
    except UnavailableFeatureError as exc:
        out.append(str(exc))
"""


def test_using_a_left_out_part_raises_an_error_that_names_it() -> None:
    quic, mdns = in_fresh_process(USE_LEFT_OUT_PARTS)  # type: ignore[misc]
    assert "QUICTransport: py-libp2p's QUIC transport" in quic and "is left out" in quic
    assert "create_mdns_discovery: py-libp2p's mDNS discovery is left out" in mdns


async def test_two_hosts_still_connect_and_gossip_over_tcp() -> None:
    first, second = (P2PHost(os.urandom(32), ["/ip4/127.0.0.1/tcp/0"]) for _ in range(2))
    await first.start()
    await second.start()
    try:
        inbox = await first.subscribe("results")
        await second.subscribe("results")
        await second.connect(first.listen_addrs[0])
        for _ in range(100):  # the mesh forms within a gossip heartbeat or two
            if (await second.mesh_sizes()).get("results"):
                break
            await asyncio.sleep(0.1)
        await second.publish("results", b"over tcp", require_mesh=True)
        message = await asyncio.wait_for(inbox.get(), 10)
        assert message.data == b"over tcp"
    finally:
        await second.stop()
        await first.stop()
