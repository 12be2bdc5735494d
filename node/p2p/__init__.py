"""The P2P layer: py-libp2p (Trio-only) in a thread of its own, used from asyncio. Imports only node.wire.topics.

host.py            P2PHost: the asyncio face (start, dial, subscribe, publish), runs the service's thread
service.py         P2PService: the Trio side (libp2p host, TCP + Noise + Yamux, gossipsub)
libp2p_logging.py  routes py-libp2p's stdlib loggers into the application's logging
connector.py       Connector: dials bootstrap peers, re-dials with backoff and jitter
"""
