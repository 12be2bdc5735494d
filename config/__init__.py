"""Settings layered as defaults < TOML file < environment < CLI flags. Imports no other first-party package.

layered.py            LayeredSettings: the layering, each setting's flag and variable, errors naming the setting,
                      the README settings table
settings.py           Settings: the node's settings (COMPUTE_NODE_*); the gateway's are node/gateway/settings.py
example.toml          a commented node configuration
compute-node.service  the node's systemd unit
compute-node-gateway.service, compute-node-gateway.socket  the gateway's unit and its socket (socket activation)
"""
