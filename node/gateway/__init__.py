"""The gateway: a publisher peer plus an HTTP API, so any language (or curl) can use the network.

settings.py  GatewaySettings (COMPUTE_NODE_GATEWAY_*, TOML via --config)
schemas.py   the JSON shapes of the HTTP API (pydantic)
store.py     TaskStore: task state in SQLite (survives restarts until it expires)
service.py   GatewayService: submits tasks, chooses nodes, records results, long polling
auth.py      API keys and per-key rate limits
limits.py    request body size limit (ASGI middleware)
host_check.py  Host header check without API keys: loopback names only (DNS rebinding)
app.py       the FastAPI routes
rpc.py       RpcService: the API of Dria's Python SDK (tasks posted as it posts them, raw envelopes back)
rpc_store.py RpcStore: its tasks and per-key result queues in the same SQLite file
rpc_app.py   its routes: GET /health, /rpc/get_alive_peers, /rpc/results, POST /rpc/task
openai_api/  the OpenAI-compatible routes: /v1/chat/completions, /v1/models, /v1/embeddings
server.py    Gateway: service + HTTP server, started and stopped together
"""
