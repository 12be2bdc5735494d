"""The cluster harness's byte counter (benchmarks/cluster_nodes.py, SocketLedger): bytes of a
connection that closed between two readings still count for its process, read from the kernel's
per-socket counters over real loopback TCP sockets."""

from __future__ import annotations

import os
import socket

from benchmarks.cluster_nodes import SocketLedger


def test_bytes_of_a_closed_connection_still_count() -> None:
    ledger = SocketLedger()
    before = ledger.poll().get(os.getpid(), (0, 0))
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        client.sendall(b"x" * 100_000)
        received = 0
        while received < 100_000:
            received += len(peer.recv(65536))
        during = ledger.poll()[os.getpid()]  # both ends are this process's sockets
        client.close()
        peer.close()
    after = ledger.poll()[os.getpid()]  # neither socket is open any more
    assert during[0] - before[0] >= 100_000 and during[1] - before[1] >= 100_000
    # the closed sockets' bytes are kept (a sum over the open sockets would be back to `before`)
    assert after[0] - before[0] >= 100_000 and after[1] - before[1] >= 100_000
