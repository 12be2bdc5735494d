"""The `compute-node` command: start a node, run a task as a publisher, list measured nodes, manage models."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

from config.settings import ConfigError, Settings
from node.cli.gateway import add_gateway_command, run_gateway
from node.cli.models import add_models_commands, run_models_command
from node.cli.nodes import PUBLISHER_DATA_DIR, add_nodes_command, reputation_path, run_nodes
from node.cli.operate import add_operate_commands, run_doctor_command, run_ledger, run_pause
from node.cli.settings import EXIT_ERROR, add_settings_flags, flag_number, settings_from
from node.ops.inert_text import inert

EXIT_TIMEOUT = 2


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse type)."""
    value = flag_number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _share(text: str) -> float:
    """A share within 0..1 (argparse type)."""
    value = flag_number(text)
    if not 0.0 <= value <= 1.0:  # NaN fails both
        raise argparse.ArgumentTypeError(f"must be within 0..1, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        value = int(text)  # exact past 2**53, where a float would not be
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    add_settings_flags(parser, Settings)


def _settings_from(args: argparse.Namespace) -> Settings:
    return settings_from(args, Settings)


def build_parser() -> argparse.ArgumentParser:
    """The command line: every subcommand and its flags."""
    parser = argparse.ArgumentParser(prog="compute-node", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="run a compute node until SIGINT/SIGTERM")
    _add_settings_flags(start)

    run_task = commands.add_parser("run-task", help="publish one task as a publisher and print its result")
    run_task.add_argument(
        "--peer", action="append", required=True, help="multiaddr of a node to join through (repeatable)"
    )
    run_task.add_argument("--model", action="append", required=True, help="acceptable model (repeatable)")
    source = run_task.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="run the Simple workflow on this prompt")
    source.add_argument("--workflow", type=Path, help="workflow JSON file")
    run_task.add_argument("--input", dest="task_prompt", help="the task's input prompt (memory key __input)")
    run_task.add_argument("--node", action="append", help="address of a node to pick (repeatable)")
    run_task.add_argument("--timeout", type=_seconds, default=60.0, help="seconds to wait for the result (default 60)")
    key = run_task.add_mutually_exclusive_group()
    key.add_argument("--key", help="publisher secret key (hex; shows in `ps`: prefer --key-file); default: a fresh key")
    key.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help="file holding the publisher secret key (hex); default: a fresh key",
    )
    run_task.add_argument("--max-tokens", type=_positive_int, default=250, help="max_tokens of the Simple workflow")
    run_task.add_argument(
        "--delivery",
        choices=["direct", "gossip"],
        default="direct",
        help="direct: a stream to the chosen node (protocol 0.4, the default); gossip: the task topic (0.3)",
    )
    run_task.add_argument(
        "--verify",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of results (0..1) to verify: against the model file here, else by a score task on another "
        "node serving the model (docs/VERIFICATION.md); default 0",
    )
    run_task.add_argument(
        "--data-dir",
        type=Path,
        default=PUBLISHER_DATA_DIR,
        help=f"where the measured reputation of nodes and the scoring copies of --verify are kept "
        f"(default {PUBLISHER_DATA_DIR})",
    )

    models = commands.add_parser("models", help="list, pull, remove or benchmark models")
    add_models_commands(models, _add_settings_flags)

    add_gateway_command(commands)
    add_operate_commands(commands, _add_settings_flags)
    add_nodes_command(commands)

    identity = commands.add_parser("identity", help="print this node's address and peer id")
    _add_settings_flags(identity)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command in `argv` (default: sys.argv); its exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "start":
            return _start(args)
        if args.command == "run-task":
            return _run_task(args)
        if args.command == "identity":
            return _identity(args)
        if args.command == "gateway":
            return run_gateway(args)
        if args.command in ("pause", "resume"):
            from node.ops.log import configure_logging

            configure_logging("error", "console")  # the command says what it did; the node's own log lines would not
            return run_pause(_settings_from(args), pause=args.command == "pause")
        if args.command == "doctor":
            from node.ops.log import configure_logging

            configure_logging("error", "console")
            settings = _settings_from(args)
            _check_registry(settings)
            return run_doctor_command(settings, args.skip, args.hear)
        if args.command == "ledger":
            return run_ledger(_settings_from(args), args.days, args.json)
        if args.command == "nodes":
            return run_nodes(args)
        if args.command == "models":
            from node.ops.log import configure_logging

            settings = _settings_from(args)
            _check_registry(settings)
            configure_logging("warning", settings.log_format)
            return run_models_command(args, settings)
    except ConfigError as exc:
        print(f"compute-node: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return EXIT_ERROR


def _check_registry(settings: Settings) -> None:
    """ConfigError naming `registry` when an entry is invalid (doctor and models build the registry too)."""
    from models.registry import Registry, RegistryError

    try:
        Registry.builtin().with_overrides(settings.registry)
    except RegistryError as exc:
        raise ConfigError(f"invalid setting 'registry': {exc}") from None


def _start(args: argparse.Namespace) -> int:
    from node.daemon.launch import launch_node
    from node.ops.log import configure_logging

    settings = _settings_from(args)
    configure_logging(settings.log_level, settings.log_format)
    return launch_node(settings)


def _identity(args: argparse.Namespace) -> int:
    from node.wire.identity import Identity, IdentityError

    settings = _settings_from(args)
    try:
        identity = Identity.from_secret_or_file(settings.secret_key, settings.identity_path)
    except IdentityError as exc:
        print(f"compute-node identity: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"address {identity.address}\npeer_id {identity.peer_id}")
    return 0


def _run_task(args: argparse.Namespace) -> int:
    import uvloop

    from node.ops.log import configure_logging

    configure_logging("warning", "auto")
    from workflows import WorkflowValidationError, parse_workflow

    if args.key is not None:
        print(
            "compute-node: warning: --key shows the key in `ps` to every local user; give it with --key-file PATH",
            file=sys.stderr,
        )
    if args.key_file is not None:
        from config.layered import read_secret_key_file

        try:
            args.key = read_secret_key_file(args.key_file.expanduser())
        except ValueError as exc:  # names the file, never its content
            print(f"compute-node: --key-file: {exc}", file=sys.stderr)
            return EXIT_ERROR
    try:
        workflow = _load_workflow(args)
    except OSError as exc:  # its text names the file
        print(f"compute-node: cannot read workflow: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, not an object, or nested past the parser
        what = "JSON nested too deeply" if isinstance(exc, RecursionError) else exc
        print(f"compute-node: cannot read workflow {args.workflow}: {what}", file=sys.stderr)
        return EXIT_ERROR
    try:
        parse_workflow(workflow)  # as nodes (and the gateway) check it: no node is sent what none would run
    except WorkflowValidationError as exc:
        print(f"compute-node: invalid workflow: {inert(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    return uvloop.run(_publish(args, workflow))


def _load_workflow(args: argparse.Namespace) -> dict[str, Any]:
    if args.workflow is not None:
        data = json.loads(args.workflow.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{args.workflow} does not hold a JSON object")
        return data
    from workflows import Simple

    return Simple().workflow(prompt=args.prompt, max_tokens=args.max_tokens)


def _first_error(exc: Exception) -> str:
    """A pydantic ValidationError as one line naming the flag's field; other errors as they are."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    first = exc.errors()[0]
    flags = {"picked_nodes": "--node", "model": "--model", "models": "--model", "nodes": "--node"}
    loc = [str(part) for part in first["loc"]]
    field = flags.get(loc[0], ".".join(loc)) if loc else "task"
    return f"{field}: {first['msg']} (got {first.get('input')!r})"


async def _publish(args: argparse.Namespace, workflow: dict[str, Any]) -> int:
    from node.cli.scorers import LocalScorers
    from node.publisher.client import Client, ClientError, NoNodeError, Task, TaskFailedError, TaskTimeoutError
    from node.publisher.verification import ResultVerifier
    from node.wire.error_kinds import ErrorKind
    from node.wire.identity import IdentityError

    scorers = LocalScorers(Settings(), args.data_dir.expanduser() / "scoring") if args.verify > 0 else None
    try:
        client = Client(
            peers=args.peer,
            secret_key=args.key,
            delivery=args.delivery,
            reputation_path=reputation_path(args.data_dir),
            verifier=None if scorers is None else ResultVerifier(args.verify, scorers),
        )
    except IdentityError as exc:  # its text never holds the key
        print(f"compute-node: {'--key-file' if args.key_file is not None else '--key'}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        task = Task(workflow=workflow, models=args.model, prompt=args.task_prompt, nodes=args.node)
        result = await client.execute(task, timeout=args.timeout)
    except (TaskTimeoutError, NoNodeError) as exc:
        print(f"compute-node: {inert(str(exc))}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (TaskFailedError, ClientError, ValueError) as exc:  # a failed task's reason is the node's own text
        print(f"compute-node: {inert(_first_error(exc))}", file=sys.stderr)
        # Every node that could take it was busy (or paused): as when none was found, a script may try again.
        busy = isinstance(exc, TaskFailedError) and exc.kind is ErrorKind.BUSY
        return EXIT_TIMEOUT if busy else EXIT_ERROR
    finally:
        await asyncio.shield(client.close())
        if scorers is not None:
            scorers.close()
    if args.verify >= 1 and result.verified is None:  # asked for every result, and this one could not be
        shown = inert(result.model)
        print(
            f"compute-node: warning: the result of {shown!r} is not verified (no scorer here, or its scorers could "
            "not confirm it: see the log)",
            file=sys.stderr,
        )
    # The node's text: as it is into a pipe or a file (the caller's data), inert on a terminal.
    print(inert(result.text, keep="\n\t") if sys.stdout.isatty() else result.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
