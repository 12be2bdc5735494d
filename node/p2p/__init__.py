"""The P2P layer: py-libp2p (Trio-only) in a thread of its own, used from asyncio. Imports only node.wire.topics.

host.py            P2PHost: the asyncio face (start, connect, subscribe, relay, publish, open_stream, wait_for_mesh)
trio_thread.py     TrioThread: runs the service under Trio in its own thread; calls into it and hands results back
errors.py          P2PError and its kinds, as the asyncio side raises them; P2PServiceError and its, on the Trio side
handoff.py         GossipQueues: gossip messages handed from the Trio thread to subscription queues, within a budget
service.py         P2PService: the Trio side (runs the libp2p host and its gossip; dials, opens direct-delivery streams)
libp2p_host.py     the libp2p host as the service starts it: TCP + Noise + Yamux, listen ports checked, its swarm bounded
gossip.py          Gossip: gossipsub on the host (topics, validators, hand-off to the message sink, paced publishing)
pubsub.py          StreamPeerAwarePubsub: py-libp2p's Pubsub with our read loop per peer; stream-only peers left out, non-readers disconnected
outbound_queue.py  ByteBoundedRpcQueue: each pubsub peer's outbound queue bounded in bytes, all of them within one budget
pacing.py          OutboundPacing: a publish waits for room in peers' outbound queues, within a budget of time no peer can stall
pubsub_limits.py   bounds on one peer's pubsub RPCs (trim_rpc), IWANT answers (BoundedGossipSub), expired backoff
seen_cache.py      WindowedSeenCache: gossip's seen message ids for the replay window, in time buckets (no sweeping thread)
stream_only.py     StreamOnlyPeers: the peers a publisher dialled only for streams, kept out of gossip; pruned, bounded
peer_gone.py       PeerGoneNotifee: tells when a peer's last connection closed (a publisher's gossip task to it is lost), and when one opens
libp2p_logging.py  routes py-libp2p's stdlib loggers into the application's logging
connector.py       Connector: dials bootstrap peers, re-dials with backoff and jitter
peer_addrs.py      peer_info: a peer address read, saying what it lacks; looked_up: its /dns, /dns4, /dns6 names through the system resolver
frames.py          the direct-delivery frame codec: varint length + bytes (FrameReader, encode_frame)
streams.py         StreamTable: the Trio side of direct-delivery streams and their limits (StreamLimits)
frame_stream.py    FrameStream: the asyncio face of one direct-delivery stream (receive, send, close); FrameStreams by id
connection_trim.py ConnectionTrimmer: closes idle inbound connections past a budget (ConnectionBudget), oldest first
kept_peers.py      KeptPeers: peers the trimmer leaves alone while held (a publisher whose task runs on the node)
bounded_peerstore.py BoundedPeerStore: what a peer can make the peerstore hold (addresses, protocols, records); never our keys
bounded_yamux.py   BoundedYamux: streams a peer may open on one connection, its receive windows, pings answered
yamux_windows.py   use_half_window_updates: yamux streams announce room at half their window (go-yamux), not after every read
inbound_gate.py    InboundGate: inbound connections per remote IP (IPv6 /56): open at once and new per minute, before the handshake; each handler ends with its connection
announce.py        advertised_addrs: the dialable addresses a node puts in its heartbeats
steady_addrs.py    SteadyAddrs: the host's addresses rebuilt every few seconds, not on every pubsub RPC sent
sender_records.py  SenderRecords: the signed peer record on each pubsub RPC read, checked once per peer and bytes
lean_libp2p.py     stand-ins for the parts of py-libp2p the node never runs (QUIC, mDNS, AutoTLS, WebSocket): ~16 MiB less
"""

from node.p2p.lean_libp2p import install

install()  # before any module of this package imports libp2p
