"""The wire protocol: what goes over gossip and direct-delivery streams, checked and signed. Imports no other node package.

topics.py     topic names, model wildcards, protocol name and version, size limits, the deterministic-error prefix, the stream protocol id
identity.py   Identity: the secp256k1 key, Ethereum-style address, signatures, libp2p peer id
ecies.py      result encryption to the publisher's key
envelope.py   the signed envelope around every message: seal, open_envelope
messages.py   the bodies: TaskBody, ResultBody, HeartbeatBody (pydantic)
wire_time.py  nanosecond and RFC-3339 times on the wire
bloom.py      the task's node filter (a bloom filter of addresses)
proof.py      Proof: a task's generation steps (tokens, log-probabilities) sealed for its publisher to verify
results.py    result_body: the one place a result (encrypted text or error) and its stats are built
error_kinds.py  ErrorKind (invalid prompt, busy, interrupted, failed) of an error result: TaskError.of writes one, parse_error reads one
inbound.py    envelope + body checks per topic: GossipGate (the gossip validator), decode, the consume loop
direct.py     protocol 0.4 stream frames besides envelopes: StreamAnswer (accepted/busy/ignored/rejected), Progress
"""
