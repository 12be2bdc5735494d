"""The gateway: a publisher peer plus an HTTP API, so any language (or curl) can use the network.

    settings.py  GatewaySettings (COMPUTE_NODE_GATEWAY_*, TOML via --config)
    schemas.py   the JSON shapes of the HTTP API (pydantic)
    store.py     TaskStore: task state in SQLite (survives restarts until it expires)
    service.py   GatewayService: submits tasks, chooses nodes, records results, long polling
    auth.py      API keys and per-key rate limits
    limits.py    request body size limit (ASGI middleware)
    app.py       the FastAPI routes
    server.py    Gateway: service + HTTP server, started and stopped together
    cli.py       `compute-node gateway`
"""
