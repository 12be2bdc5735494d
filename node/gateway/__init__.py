"""The gateway: a publisher peer plus an HTTP API, so any language (or curl) can use the network.

settings.py  GatewaySettings (COMPUTE_NODE_GATEWAY_*, TOML via --config)
schemas.py   the JSON shapes of the HTTP API (pydantic)
database.py  the gateway's SQLite file: opening it, transactions, Table, one purge loop for every table
store.py     TaskStore: task state of /v1/tasks (survives restarts until it expires)
unsaved.py   UnsavedWrites: outcomes and network ids the store refused (a full disk), written when it can, and at a stop
service.py   GatewayService: submits tasks through the Client (which chooses nodes), records results, long polling; the pending caps
auth.py      API keys and per-key rate limits
limits.py    request body size limit and time limits on a request's arrival (slowloris): ASGI middleware, h11 protocol
validation.py  the field at fault in a request that failed validation, named alike on every API
host_check.py  Host header check without API keys: loopback names only (DNS rebinding)
app.py       the FastAPI routes
dria_sdk/    the routes of Dria's Python SDK: GET /health, /rpc/get_alive_peers, /rpc/results, POST /rpc/task
openai_api/  the OpenAI-compatible routes: /v1/chat/completions, /v1/models, /v1/embeddings
server.py    Gateway: service, SDK service, HTTP server and purge loop, started and stopped together
"""
