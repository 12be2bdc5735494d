"""`compute-node gateway`: run a publisher peer with an HTTP API until SIGINT/SIGTERM.

node/cli/main.py adds the subcommand with `add_gateway_command(subparsers)` and runs
it with `run_gateway(args)`. Every gateway setting has a flag (`--peer`,
`--api-key`, `--rate-limit`, ...), a COMPUTE_NODE_GATEWAY_* variable and a TOML
key in the `--config` file.
"""

from __future__ import annotations

import argparse
import sys

from config.settings import ConfigError
from node.cli.settings import EXIT_ERROR, add_settings_flags, settings_from
from node.gateway.settings import GatewaySettings

DEST_PREFIX = "gateway_"


def add_gateway_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add `gateway` to the `compute-node` subcommands; returns its parser."""
    parser = subparsers.add_parser(
        "gateway",
        help="run a publisher peer with an HTTP API (POST /v1/tasks, GET /v1/tasks/{id}, /docs; Dria's SDK: /rpc/*)",
    )
    add_settings_flags(parser, GatewaySettings, dest_prefix=DEST_PREFIX)  # kept apart from the node's flags
    return parser


def run_gateway(args: argparse.Namespace) -> int:
    """Run the gateway the parsed `args` describe; the process exit code."""
    import uvloop

    from node.gateway.database import DatabaseError
    from node.gateway.server import serve
    from node.ops.data_lock import DataDirLockedError
    from node.ops.http_api import HttpServerError
    from node.ops.log import configure_logging
    from node.ops.open_files import raise_open_files_limit
    from node.ops.systemd import SocketActivationError
    from node.publisher.client import ClientError
    from node.wire.identity import IdentityError

    try:
        settings = settings_from(args, GatewaySettings, dest_prefix=DEST_PREFIX)
    except ConfigError as exc:
        print(f"compute-node gateway: {exc}", file=sys.stderr)
        return EXIT_ERROR
    configure_logging(settings.log_level, settings.log_format)
    raise_open_files_limit()  # each client connection is a descriptor: a shell's 1,024 runs out first
    try:
        uvloop.run(serve(settings))
    except (
        ClientError,
        DatabaseError,
        DataDirLockedError,
        HttpServerError,
        IdentityError,
        SocketActivationError,
    ) as exc:
        print(f"compute-node gateway: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0
