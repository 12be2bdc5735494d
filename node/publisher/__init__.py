"""The publisher side: submit tasks to the network and collect their results. Imports only wire and p2p.

tasks.py       Task (what a publisher asks for), its wire body (task_body, check_size) and TaskResult (a verified, decrypted result)
client.py      Client: joins the network, runs tasks (execute, submit, wait), verifies results; its lifecycle
sender.py      TaskSender: one signed task to one node, on a stream (direct) or on gossip
peer_watch.py  PeerWatch: a node's connection to us closed: one paced probe, then its gossip tasks lost or watched again, the node weighed last or not
inbox.py       ResultInbox: the awaited tasks; accepts each one's result once (picked node, a model asked for, decrypts it)
gossip_peers.py  GossipPeerKeeper: keeps enough gossip peers, redials when they die or heartbeats stop
node_table.py  NodeTable: the nodes seen in heartbeats (models, capacity in all and per model, speed, addrs, leaving), for choosing nodes
node_index.py  ModelIndex: which nodes claim which model, so a choice draws a bounded sample instead of scanning
heartbeat_claims.py  what a heartbeat claims, made safe: dialable addresses (dialable_addr), numbers clamped, envelopes not bulky
reputation.py  Reputation: what this publisher measured of each node (SQLite), the weight node choice uses
reputation_records.py  ReputationSettings, NodeRecord (one node's stored sums), Sums, ReputationView (shown to people)
direct.py      deliver: one task on a stream to one node (its answer, progress frames, result)
attempts.py    AttemptLoop: one execute call's attempts (choose, send, wait for the first news, retry)
attempt.py     Attempt: one task id sent to one node; next_outcome, checked, id_taken: what its news means
errors.py      ClientError and its kinds (too large, timeout, no node, task failed, verification failed), re-exported by client.py
verification.py  ProofChecker, ResultVerifier: re-score a share of results' proofs and fail the ones that lie
remote_scoring.py  verifying without the model file: proof steps scored by a `score` task on another node
prompt_match.py  PromptExpectation: a proven step's prompt must hold the publisher's own messages
"""
