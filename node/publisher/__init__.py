"""The publisher side: submit tasks to the network and collect their results. Imports only wire and p2p.

client.py      Client: joins the network, publishes signed tasks, decrypts results, waits for them
node_table.py  NodeTable: the nodes seen in heartbeats (models, capacity, speed), for choosing nodes
"""
