"""The gateway as the endpoint of Dria's Python SDK (`dria.constants.RPC_BASE_URL` pointed at the gateway, README "Using Dria's SDK"): its `/rpc` API, kept apart from `/v1`.

service.py  SdkService: tasks posted as the SDK posts them, published once; heartbeat and result envelopes kept raw
store.py    SdkStore: those tasks and each key's result queue, a table of the gateway's database
unqueued.py  UnqueuedResults: results the store refused (a full disk), queued when it can, and at a stop
routes.py   the routes: GET /health, GET /rpc/get_alive_peers, GET /rpc/results, POST /rpc/task
"""
