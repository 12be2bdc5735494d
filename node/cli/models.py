"""`compute-node models ...`: list, pull, remove and benchmark models."""

from __future__ import annotations

import argparse
import sys

from config.settings import Settings
from models.requests import ModelError
from node.cli.settings import EXIT_ERROR

# llama.cpp is imported only by the commands that use it: `compute-node start` goes
# through this module, and the daemon itself never loads llama.cpp (its execution
# processes do).


def add_models_commands(models: argparse.ArgumentParser, add_settings_flags) -> None:  # type: ignore[no-untyped-def]
    """Add the `models` subcommands (list, pull, rm, bench) to the parser."""
    actions = models.add_subparsers(dest="models_command", required=True)
    listing = actions.add_parser("list", help="every known model: file, size, present or not")
    pull = actions.add_parser("pull", help="download a model (resumes; verifies sha256 when known)")
    pull.add_argument("name")
    remove = actions.add_parser("rm", help="delete a downloaded model file")
    remove.add_argument("name")
    bench = actions.add_parser("bench", help="measure prompt and generation tokens/s (default: configured models)")
    bench.add_argument("name", nargs="?")
    for parser in (listing, pull, remove, bench):
        add_settings_flags(parser)


def run_models_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run a `models` subcommand; its exit status."""
    from node.execution.model_setup import model_store

    registry, store = model_store(settings)
    try:
        if args.models_command == "list":
            print(f"{'NAME':40} {'FILE':48} {'SIZE':>10}  PRESENT")
            for stored in store.list(registry):
                size = f"{stored.size / 1e6:.0f} MB" if stored.size else "-"
                print(f"{stored.name:40} {stored.file:48} {size:>10}  {'yes' if stored.present else 'no'}")
            return 0
        if args.models_command == "pull":
            path = store.pull(registry.get(args.name), progress=True)
            print(f"{args.name}: {path}")
            return 0
        if args.models_command == "rm":
            removed = store.remove(registry.get(args.name))
            print(f"{args.name}: {'removed' if removed else 'no downloaded file to remove'}")
            return 0 if removed else 1
        if args.models_command == "bench":
            import uvloop

            names = [args.name] if args.name else list(dict.fromkeys(settings.models))
            return uvloop.run(_bench(names, settings))
    except ModelError as exc:
        print(f"compute-node: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR


async def _bench(names: list[str], settings: Settings) -> int:
    from models.loader import measure_speed
    from node.execution.model_setup import create_model

    for index, name in enumerate(names, 1):
        print(f"[{index}/{len(names)}] {name}: loading...", end="", flush=True)
        model = await create_model(name, settings)
        try:
            print(" measuring...", end="", flush=True)
            result = await measure_speed(model, settings.benchmark_cache_path, fresh=True)
        finally:
            await model.close()
        print(f" prompt {result.prompt_tps:.1f} tok/s, generation {result.generation_tps:.1f} tok/s", flush=True)
    return 0
