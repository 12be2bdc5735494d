"""`compute-node gateway`: run a publisher peer with an HTTP API until SIGINT/SIGTERM.

node/cli.py adds the subcommand with `add_gateway_command(subparsers)` and runs
it with `run_gateway(args)`. Every gateway setting has a flag (`--peer`,
`--api-key`, `--rate-limit`, ...), a COMPUTE_NODE_GATEWAY_* variable and a TOML
key in the `--config` file.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from config.settings import ConfigError
from node.gateway.settings import GatewaySettings, gateway_flag, load_gateway_settings

EXIT_ERROR = 1


def add_gateway_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `gateway` to the `compute-node` subcommands; returns its parser."""
    parser = subparsers.add_parser(
        "gateway", help="run a publisher peer with an HTTP API (POST /v1/tasks, GET /v1/tasks/{id}, /docs)"
    )
    parser.add_argument("--config", type=Path, help="TOML config file")
    for name, field in GatewaySettings.model_fields.items():
        dest = f"gateway_{name}"  # kept apart from the node's own settings flags
        args = typing.get_args(field.annotation)
        is_list = typing.get_origin(field.annotation) is list or (args and typing.get_origin(args[0]) is list)
        if is_list:
            parser.add_argument(gateway_flag(name), dest=dest, action="append", default=None, help=f"{field.description} (repeatable)")
        else:
            parser.add_argument(gateway_flag(name), dest=dest, default=None, help=field.description)
    return parser


def run_gateway(args: argparse.Namespace) -> int:
    """Run the gateway the parsed `args` describe; the process exit code."""
    import uvloop

    from node.client import ClientError
    from node.gateway.server import serve
    from node.gateway.store import TaskStoreError
    from node.http_api import HttpServerError
    from node.identity import IdentityError
    from node.log import configure_logging

    try:
        overrides = {name: getattr(args, f"gateway_{name}", None) for name in GatewaySettings.model_fields}
        settings = load_gateway_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"compute-node gateway: {exc}", file=sys.stderr)
        return EXIT_ERROR
    configure_logging(settings.log_level, settings.log_format)
    try:
        uvloop.run(serve(settings))
    except (ClientError, TaskStoreError, HttpServerError, IdentityError) as exc:
        print(f"compute-node gateway: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0
